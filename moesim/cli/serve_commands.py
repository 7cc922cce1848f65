"""`moesim serve`: a deployment under load, request by request (continuous batching)."""
from __future__ import annotations

from typing import Any, Optional

import click

from moesim.cli.app import (REPORT_SUFFIXES, SCENARIO_ARG, OutputFile, OutputFolder, deployment_options, echo_json,
                            main, scenario_overrides)

# vLLM and SGLang bench_serving send 1,000 prompts unless told otherwise (--num-prompts default).
DEFAULT_REQUESTS = 1000


class ServingFramework(click.ParamType):
    """A framework of workloads/frameworks.yaml with a `batching` policy. The names come from the
    data, so a framework added there is servable without a code change; they are read only when
    the option is given, so `moesim --help` stays free of the data loader (pydantic)."""

    name = "framework"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from moesim.cluster.scenario import framework_table
        servable = sorted(n for n, f in framework_table().frameworks.items() if f.batching is not None)
        if value not in servable:
            self.fail(f"{value!r} is not a serving framework with a batching policy in workloads/frameworks.yaml; "
                      f"use one of: {', '.join(servable)}", param, ctx)
        return value


@main.command()
@SCENARIO_ARG
@deployment_options
@click.option("--concurrency", type=int, help="Closed loop: C clients, each sends its next request when one finishes.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals of R requests per second.")
@click.option("--arrivals", "arrivals_file",
              help="Replay a trace: a CSV (header arrival_s,input_tokens,output_tokens) or JSONL file, one request "
                   "a row; it gives every request's time and lengths.")
@click.option("--isl", help="Prompt (input) tokens per request: N, fixed:N, uniform:LO:HI or "
                            "lognormal:MEAN:SIGMA[:MAX].")
@click.option("--osl", help="Output tokens per request: N, fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX].")
@click.option("--requests", type=int,
              help=f"Measured requests [default: {DEFAULT_REQUESTS:,}, bench_serving's --num-prompts; with "
                   "--arrivals, every row after the warm-up ones].")
@click.option("--warmup", type=int, default=0, show_default=True,
              help="Requests sent first and left out of every statistic.")
@click.option("--closed-loop-start", type=click.Choice(["staggered", "burst"]), default="staggered", show_default=True,
              help="Closed loop: when the clients send their first request - staggered over one request's time, "
                   "or all at t = 0 as bench_serving does.")
@click.option("--framework", type=ServingFramework(),
              help="Serving framework whose batching defaults run the engine: one with a batching policy in "
                   "workloads/frameworks.yaml, e.g. sglang, vllm, trtllm [default: the scenario's].")
@click.option("--seed", type=int, help="Seed of arrivals, lengths, client starts and routing (default: the "
                                       "scenario's).")
@click.option("--mode", type=click.Choice(["agg", "disagg"]), default="agg", show_default=True,
              help="agg: every instance prefills and decodes; disagg: separate prefill and decode pools, KV sent "
                   "between them over the topology.")
@click.option("--prefill-workers", type=int, help="disagg: prefill engine instances (each one EP group of the split).")
@click.option("--decode-workers", type=int, help="disagg: decode engine instances (each one EP group of the split, "
                                                 "or of --decode-tp/--decode-ep/--decode-etp).")
@click.option("--prefill-max-running", type=int,
              help="disagg: the prefill pool's own limit of prompts in flight per attention-DP rank (e.g. 1, as "
                   "AIConfigurator launches prefill engines) [default: the framework's, as the decode pool].")
@click.option("--decode-tp", type=int, help="disagg: the decode pool's own attention TP size. Any --decode-* flag "
                                            "gives the decode pool a split of its own, built from the --decode-* "
                                            "flags alone (unset: tp 1, ep 1, etp as --etp defaults); none: the "
                                            "scenario's split.")
@click.option("--decode-ep", type=int, help="disagg: the decode pool's expert-parallel size (one decode instance is "
                                            "ep x etp GPUs).")
@click.option("--decode-etp", type=int, help="disagg: the decode pool's expert tensor-parallel size.")
@click.option("--cache", "cache_dir", type=OutputFolder(),
              help="Keep the step-time grid's simulated points in this folder and reuse them in later runs of the "
                   "same deployment, code and data.")
@click.option("--trace", "trace_file", type=OutputFile(".json"),
              help="Write a Chrome/Perfetto trace: engine steps per instance, phases per request.")
@click.option("--slo-ttft-ms", type=float,
              help="Goodput: a request is good only if its own TTFT is at most this many ms (DistServe's goodput, "
                   "as vLLM bench_serving --goodput counts it).")
@click.option("--slo-tpot-ms", type=float, help="Goodput: a request is good only if its own TPOT is at most this "
                                                "many ms.")
@click.option("--slo-e2e-ms", type=float, help="Goodput: a request is good only if its own end-to-end latency is at "
                                               "most this many ms.")
@click.option("--report", "report_file", type=OutputFile(*REPORT_SUFFIXES),
              help="Also write a report of this run (.html or .pdf): deployment and load, percentiles, latency "
                   "distributions, batch and KV over time, goodput with SLOs, assumptions.")
@click.option("--json", "as_json", is_flag=True, help="Print the Result as JSON.")
def serve(scenario: Optional[str], concurrency: Optional[int], rate: Optional[float], arrivals_file: Optional[str],
          isl: Optional[str], osl: Optional[str], requests: Optional[int], warmup: int, closed_loop_start: str,
          framework: Optional[str], seed: Optional[int], mode: str, prefill_workers: Optional[int],
          decode_workers: Optional[int], prefill_max_running: Optional[int], decode_tp: Optional[int], decode_ep: Optional[int],
          decode_etp: Optional[int], cache_dir: Optional[str], trace_file: Optional[str],
          slo_ttft_ms: Optional[float], slo_tpot_ms: Optional[float], slo_e2e_ms: Optional[float],
          report_file: Optional[str], as_json: bool, **flags: Any) -> None:
    """Serve a load on a deployment: TTFT, TPOT, ITL, E2E (mean, p50, p90, p99), tokens/s per GPU and per user.

    The scenario gives the deployment (model, system, split, dtypes, framework); the load replaces
    its workload. Lengths are fixed or drawn per request (--isl/--osl lognormal:MEAN:SIGMA, ...),
    or come from a trace (--arrivals). Each engine step's time comes from moesim's step model.
    With --mode disagg the deployment is P prefill and D decode instances of the scenario's EP
    group (or, with --decode-tp/--decode-ep, decode instances of a split of their own), prefill on
    the first GPUs and decode after them; each request's KV goes prefill -> decode as flows on
    the system's topology. --slo-ttft-ms / --slo-tpot-ms / --slo-e2e-ms add goodput: the requests
    per second (and output tokens) of the requests that meet them, and the fraction that do.

    \b
    Examples:
      moesim serve --concurrency 64 --isl 1000 --osl 1000
      moesim serve --concurrency 64 --isl lognormal:1000:0.5 --osl uniform:100:300
      moesim serve --model qwen3-30b-a3b --gpus 2 --ep 2 --rate 20 --isl 512 --osl 128 --requests 500
      moesim serve --arrivals workloads/arrivals/example.csv --model qwen3-30b-a3b --gpus 2 --ep 2
      moesim serve --concurrency 256 --isl 2000 --osl 100 --requests 512 --json
      moesim serve --concurrency 64 --isl 1000 --osl 200 --trace serve.json --cache .moesim-cache
      moesim serve --concurrency 64 --isl 1000 --osl 200 --mode disagg --prefill-workers 1 --decode-workers 1
      moesim serve --concurrency 64 --isl 1000 --osl 200 --mode disagg --prefill-workers 2 --decode-workers 1 --prefill-max-running 1
      moesim serve --framework trtllm --concurrency 64 --isl 1000 --osl 200
      moesim serve --concurrency 64 --isl 1000 --osl 200 --slo-ttft-ms 200 --slo-tpot-ms 50 --report serve.html
      moesim serve --model qwen3-30b-a3b --gpus 4 --ep 4 --rate 20 --isl 512 --osl 128 --mode disagg --prefill-workers 1 --decode-workers 2 --decode-tp 2 --decode-ep 2
    """
    from moesim.cluster.scenario import load_scenario
    from moesim.serve.disagg import make_disagg
    from moesim.serve.load import make_load, read_arrivals
    from moesim.serve.metrics import check_slo
    from moesim.serve.run import serve as run

    slo = check_slo({"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms, "e2e_ms": slo_e2e_ms}, prefix="--slo-")

    arrivals = read_arrivals(arrivals_file, field="--arrivals") if arrivals_file is not None else None
    if requests is None and arrivals is None:
        requests = DEFAULT_REQUESTS
    load_args = dict(isl=isl, osl=osl, requests=requests, concurrency=concurrency, rate=rate, arrivals=arrivals,
                     warmup=warmup, seed=seed if seed is not None else 0, closed_loop_start=closed_loop_start)
    make_load(**load_args, prefix="--")  # bad load options fail here, before any scenario is read
    disagg = make_disagg(mode, prefill_workers, decode_workers, prefix="--", prefill_max_running=prefill_max_running,
                         decode_parallel={"tp": decode_tp, "ep": decode_ep, "etp": decode_etp})
    overrides = scenario_overrides(flags)
    if framework:
        overrides["runtime.framework"] = framework
    if seed is not None:
        overrides["seed"] = seed
    sc = load_scenario(scenario, overrides)
    load = make_load(**dict(load_args, seed=sc.input.seed), prefix="--")
    result = run(sc, load, disagg=disagg, trace=trace_file is not None, cache_dir=cache_dir, slo=slo)
    if trace_file:  # only after the run succeeded, all or nothing
        from moesim.core.output import write_atomic
        from moesim.core.result import to_json
        write_atomic(trace_file, to_json(result["_trace"], indent=None))
    if report_file:  # after the run too: a failed run leaves no report
        import json

        from moesim.core.result import to_json
        from moesim.present.report import write_report
        from moesim.serve.metrics import latency_samples_ms
        data = dict({k: v for k, v in result.items() if not k.startswith("_")},
                    latency_samples_ms=latency_samples_ms(result["_requests"]))
        write_report([("serve", json.loads(to_json(data, indent=None)), "moesim serve (this run)")], report_file)
    result = {k: v for k, v in result.items() if not k.startswith("_")}
    if as_json:
        echo_json(result)
    else:
        from moesim.present.tables import serve_table
        click.echo(serve_table(result))
