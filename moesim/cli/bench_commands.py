"""`moesim bench ...`: speed benchmarks of moesim itself and the GPU microbenchmarks."""
from __future__ import annotations

import sys
from typing import Optional

import click

from moesim.cli.app import OutputFile, echo_json, main


@main.group()
def bench() -> None:
    """Speed benchmarks; each prints ratios against a baseline measured in the same run."""


@bench.command(name="kernels")
@click.option("--tokens", type=int, default=1_000_000, show_default=True, help="Tokens per timed run.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs (best is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_kernels(tokens: int, repeats: int, as_json: bool) -> None:
    """Routing sampler and traffic kernels: Numba vs NumPy twin vs RNG floor (one core)."""
    from moesim.bench.routing_kernels import routing_benchmark
    from moesim.bench.traffic_kernels import traffic_benchmark
    from moesim.present.tables import bench_table

    routing = routing_benchmark(n_tokens=tokens, repeats=repeats)
    result = {"routing": routing["deepseek-v3"], "routing_mixtral": routing["mixtral"],
              "traffic": traffic_benchmark(n_tokens=tokens, repeats=repeats)}
    if as_json:
        echo_json(result)
    else:
        click.echo(bench_table(result, tokens))


@bench.command(name="network")
@click.option("--gpus", "sizes", default="8,72,256,1024", show_default=True,
              help="Comma-separated GPU counts of the uniform all-to-all.")
@click.option("--repeats", type=int, default=2, show_default=True, help="Timed solves (best is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_network(sizes: str, repeats: int, as_json: bool) -> None:
    """Max-min solve of a uniform all-to-all: Numba kernel vs NumPy twin, same run."""
    from moesim.bench.network import network_benchmark
    from moesim.core.errors import MoesimError
    from moesim.present.tables import network_bench_table

    try:
        counts = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise MoesimError(f"cannot read {sizes!r}", field="--gpus", fix="give GPU counts like 8,72,256") from None
    if any(c < 2 for c in counts):
        raise MoesimError("every GPU count must be >= 2", field="--gpus", fix="give GPU counts like 8,72,256")
    result = network_benchmark(sizes=counts, repeats=repeats)
    if as_json:
        echo_json(result)
    else:
        click.echo(network_bench_table(result))


@bench.command(name="engine")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_engine(as_json: bool) -> None:
    """Wall time of one DeepSeek-V3 decode step at EP144 and one 2048-GPU training step."""
    from moesim.bench.engine import engine_benchmark

    result = engine_benchmark()
    if as_json:
        echo_json(result)
        return
    e = result["engine"]
    click.echo("# moesim bench engine (one core)\n"
               f"decode step, DeepSeek-V3 EP144 on 18 x 8 H800, two-batch overlap: {e['decode_step_wall_s']:.2f} s wall "
               f"(TPOT {e['decode_tpot_ms']:.1f} ms, {e['decode_tokens_per_s_per_gpu']:,.0f} tokens/s/GPU)\n"
               f"training step, DeepSeek-V3 on 2048 H800 (PP16 x EP64 x DP128): {e['train_step_wall_s']:.2f} s wall "
               f"({e['train_tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU {e['train_mfu']:.3f})\n"
               f"simulated seconds per wall second: {e['simulated_s_per_wall_s']:.3f}")


@bench.command(name="micro")
@click.argument("name", type=click.Choice(["gemm", "grouped_gemm", "memcpy", "collective", "ep_dispatch"]))
@click.option("--backend", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cuda on a GPU machine; cpu runs the same logic and checks (torch CPU, gloo).")
@click.option("--ranks", type=int, help="Processes for collective / ep_dispatch (default: every GPU, or 2 on CPU).")
@click.option("--quick", is_flag=True, help="Small sizes (seconds on a CPU).")
@click.option("-o", "--output", type=OutputFile(".json"), help="Write the results JSON (only if the check passed).")
@click.option("--json", "as_json", is_flag=True, help="Print the results record as JSON instead of the table.")
def bench_micro(name: str, backend: str, ranks: Optional[int], quick: bool, output: Optional[str], as_json: bool) -> None:
    """Microbenchmarks for calibration (PyTorch harness; needs `pip install -e .[bench]`).

    Each prints its parameters, checks the data it moved, then a fixed table; exit 1 if the check failed.

    \b
    Examples:
      moesim bench micro collective --backend cpu --quick
      mkdir -p results && moesim bench micro gemm -o results/gemm.json   # on a GPU machine
    """
    from moesim.bench.micro.run import format_table, run_benchmark

    data = run_benchmark(name, backend=backend, ranks=ranks, quick=quick, json_path=output)
    if as_json:
        echo_json(data)
    else:
        click.echo(format_table(data))
    if not data["check"]["passed"]:
        click.echo(f"error: {name}: the benchmark's own correctness check failed; no results file written", err=True)
        sys.exit(1)


@bench.command(name="planner")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_planner(as_json: bool) -> None:
    """Configurations simulated per minute with 1 and 2 workers; VRAM-prune cost per configuration."""
    from moesim.bench.planner import planner_benchmark

    result = planner_benchmark()
    if as_json:
        echo_json(result)
        return
    p = result["planner"]
    click.echo(f"# moesim bench planner: decode sweep of {p['configs']} configurations ({p['expanded']} expanded, "
               f"{p['pruned']} pruned)\n"
               f"1 worker: {p['configs_per_min_1_worker']:,.0f} configs/min; 2 workers: "
               f"{p['configs_per_min_2_workers']:,.0f} configs/min (x{p['scaling_2_over_1']:.2f}); "
               f"VRAM prune {p['prune_ms_per_config']:.2f} ms per configuration")


@bench.command(name="serve")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_serve(as_json: bool) -> None:
    """Request-level serving: step-function build and event-loop wall time (DeepSeek-V3 FP8, 8 x B200, 1k/1k, C=256).

    The step function's grid is simulated lazily in a cold run; the baseline in the same run is the
    whole grid simulated eagerly, and the run's points read back from a disk cache. CPU seconds of
    the process are shown beside wall seconds: on a shared machine they are what the wall time would
    be without other processes on the cores.
    """
    from moesim.bench.serve import serve_benchmark

    result = serve_benchmark()
    if as_json:
        echo_json(result)
        return
    s = result["serve"]

    def verdict(key: str) -> str:
        return f"target <= {s['targets'][key]:g} s: {'met' if s['meets_targets'][key] else 'MISSED'}"

    ratio = f"x{s['eager_over_lazy_build']:.1f}" if s["eager_over_lazy_build"] else "n/a"
    plan = (f"{s['plan_points_per_min']:,.0f}" if s["plan_points_per_min"] is not None
            else f"n/a ({s['plan_points_per_min_reason']})")
    d, load = s["deployment"], s["load"]
    click.echo(f"# moesim bench serve: {d['model']} on {d['gpus']} GPUs of {d['system']} (EP {d['ep']}, {d['framework']}), "
               f"{d['mode']}, ISL {load['isl']} / OSL {load['osl']}, concurrency {load.get('concurrency')}, "
               f"{s['requests']:,} requests\n"
               f"| measure | value | note |\n| --- | --- | --- |\n"
               f"| step-function build (cold run - warm run) | {s['step_function_build_s']:.2f} s | "
               f"{s['step_function_build_cpu_s']:.2f} CPU s; "
               f"{verdict('step_function_build_s')}; {s['grid_points_simulated']} of {s['grid_points_total']} grid "
               f"points simulated |\n"
               f"| eager whole-grid build (baseline, same run) | {s['eager_grid_build_s']:.2f} s | "
               f"lazy is {ratio} faster |\n"
               f"| build from the disk cache | {s['disk_cached_build_s'] * 1e3:.1f} ms | |\n"
               f"| request simulation (warm) | {s['request_sim_wall_s']:.2f} s | {s['request_sim_cpu_s']:.2f} CPU s; "
               f"{verdict('request_sim_wall_s')}; "
               f"{s['steps']:,} steps, {s['simulated_s']:.1f} simulated s |\n"
               f"| simulated requests per wall second | {s['requests_per_wall_s']:,.0f} | |\n"
               f"| load-aware plan points per minute | {plan} | |")
