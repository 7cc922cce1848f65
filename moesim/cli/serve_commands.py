"""`moesim serve`: a deployment under load, request by request (continuous batching)."""
from __future__ import annotations

from typing import Any, Optional

import click

from moesim.cli.app import SCENARIO_ARG, deployment_options, echo_json, main, scenario_overrides

# vLLM and SGLang bench_serving send 1,000 prompts unless told otherwise (--num-prompts default).
DEFAULT_REQUESTS = 1000


@main.command()
@SCENARIO_ARG
@deployment_options
@click.option("--concurrency", type=int, help="Closed loop: C clients, each sends its next request when one finishes.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals of R requests per second.")
@click.option("--isl", type=int, required=True, help="Prompt (input) tokens per request.")
@click.option("--osl", type=int, required=True, help="Output tokens per request.")
@click.option("--requests", type=int, default=DEFAULT_REQUESTS, show_default=True,
              help="Measured requests (bench_serving's --num-prompts default).")
@click.option("--warmup", type=int, default=0, show_default=True,
              help="Requests sent first and left out of every statistic.")
@click.option("--framework", type=click.Choice(["sglang", "vllm"]),
              help="Serving framework whose batching defaults run the engine (default: the scenario's).")
@click.option("--seed", type=int, help="Seed of arrivals and routing (default: the scenario's).")
@click.option("--json", "as_json", is_flag=True, help="Print the Result as JSON.")
def serve(scenario: Optional[str], concurrency: Optional[int], rate: Optional[float], isl: int, osl: int,
          requests: int, warmup: int, framework: Optional[str], seed: Optional[int], as_json: bool,
          **flags: Any) -> None:
    """Serve a load on a deployment: TTFT, TPOT, ITL, E2E (mean, p50, p90, p99), tokens/s per GPU and per user.

    The scenario gives the deployment (model, system, split, dtypes, framework); the load replaces
    its workload. Each engine step's time comes from moesim's step model.

    \b
    Examples:
      moesim serve --concurrency 64 --isl 1000 --osl 1000
      moesim serve --model qwen3-30b-a3b --gpus 2 --ep 2 --rate 20 --isl 512 --osl 128 --requests 500
      moesim serve workloads/scenarios/decode.yaml --concurrency 256 --isl 2000 --osl 100 --json
    """
    from moesim.cluster.scenario import load_scenario
    from moesim.serve.load import make_load
    from moesim.serve.run import serve as run

    load_args = dict(isl=isl, osl=osl, requests=requests, concurrency=concurrency, rate=rate, warmup=warmup,
                     seed=seed if seed is not None else 0)
    make_load(**load_args, prefix="--")  # bad load options fail here, before any scenario is read
    overrides = scenario_overrides(flags)
    if framework:
        overrides["runtime.framework"] = framework
    if seed is not None:
        overrides["seed"] = seed
    sc = load_scenario(scenario, overrides)
    load = make_load(**dict(load_args, seed=sc.input.seed), prefix="--")
    result = run(sc, load)
    result = {k: v for k, v in result.items() if not k.startswith("_")}
    if as_json:
        echo_json(result)
    else:
        from moesim.present.tables import serve_table
        click.echo(serve_table(result))
