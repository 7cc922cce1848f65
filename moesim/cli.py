"""The `moesim` command line: click commands only; the work happens in the modules they call.

Heavy modules are imported inside commands so `moesim --help` starts instantly.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Optional

import click

SCENARIO_ARG = click.argument("scenario", required=False, type=click.Path(dir_okay=False))


class MoesimGroup(click.Group):
    """Turns every MoesimError into one `error: ...` line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from moesim.core.errors import MoesimError
        try:
            return super().invoke(ctx)
        except MoesimError as exc:
            click.echo(f"error: {exc.one_line()}", err=True)
            sys.exit(2)


def override_options(func):
    """Flags that override fields of the scenario file (or of the built-in default)."""
    options = [
        click.option("--model", help="Model name (see `moesim models`) or path to a model YAML."),
        click.option("--system", help="System name (see `moesim systems`) or path to a system YAML."),
        click.option("--gpus", type=int, help="Total GPU count."),
        click.option("--tp", type=int, help="Tensor-parallel size (attention, dense layers)."),
        click.option("--pp", type=int, help="Pipeline-parallel stages."),
        click.option("--dp", type=int, help="Data-parallel / DP-attention ranks (derived when omitted)."),
        click.option("--ep", type=int, help="Expert-parallel size."),
        click.option("--etp", type=int, help="Expert tensor-parallel size."),
        click.option("--redundant-experts", type=int, help="Extra expert slots for replicas (EPLB)."),
        click.option("--weights-dtype", help="Format of linear weights: bf16, fp8, mxfp8, mxfp4, nvfp4."),
        click.option("--expert-dtype", help="Format of routed-expert weights, if different."),
        click.option("--kv-dtype", help="KV-cache format: bf16 or fp8."),
        click.option("--batch", type=int, help="Serving: concurrent sequences per DP rank."),
        click.option("--input-len", type=int, help="Serving: prompt tokens per sequence."),
        click.option("--output-len", type=int, help="Serving: generated tokens per sequence."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


FLAG_PATHS = {
    "model": "model", "system": "system", "gpus": "gpus",
    "tp": "parallel.tp", "pp": "parallel.pp", "dp": "parallel.dp", "ep": "parallel.ep", "etp": "parallel.etp",
    "redundant_experts": "experts.redundant", "weights_dtype": "dtypes.weights",
    "expert_dtype": "dtypes.expert_weights", "kv_dtype": "dtypes.kv_cache",
    "batch": "workload.batch", "input_len": "workload.input_len", "output_len": "workload.output_len",
}


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    return {FLAG_PATHS[k]: v for k, v in flags.items() if k in FLAG_PATHS and v is not None}


def _echo_json(data: Any) -> None:
    from moesim.core.result import to_json
    click.echo(to_json(data))


@click.group(cls=MoesimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moesim")
def main() -> None:
    """Simulate and plan Mixture-of-Experts models on GPU clusters.

    \b
    Examples:
      moesim memory                                  # the built-in default scenario
      moesim memory my-scenario.yaml --json
      moesim memory --model deepseek-v3 --system dgx-h100 --gpus 16 --ep 16
      moesim models --json
    """


@main.command()
@SCENARIO_ARG
@override_options
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
def memory(scenario: Optional[str], as_json: bool, **flags: Any) -> None:
    """Per-GPU VRAM: weights, KV cache, activations, buffers, reserve, training states; fits?

    SCENARIO is a scenario YAML; without it the built-in default is used. Flags override its
    fields; giving --gpus or any parallel size rebuilds the split from the flags alone.

    \b
    Examples:
      moesim memory
      moesim memory --model deepseek-v3 --system gb200-nvl72 --gpus 72 --ep 72 --redundant-experts 32
      moesim memory --model mixtral-8x7b --gpus 2 --tp 2 --weights-dtype bf16 --json
    """
    from moesim.costs.memory import memory_ledger
    from moesim.cluster.scenario import load_scenario
    from moesim.present.tables import memory_table

    sc = load_scenario(scenario, _overrides(flags))
    ledger = memory_ledger(sc).to_json()
    if as_json:
        _echo_json(ledger)
        return
    p = sc.plan
    line = (f"{sc.input.name}: {sc.model.name} on {sc.gpus} x {sc.system.gpu.name} ({sc.system.id}); "
            f"tp={p.tp} pp={p.pp} dp={p.dp} ep={p.ep} etp={p.etp}; weights {sc.input.dtypes.weights}, "
            f"KV {sc.input.dtypes.kv_cache}")
    click.echo(memory_table(ledger, line))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def models(as_json: bool) -> None:
    """Built-in models with parameter counts and KV bytes per token (BF16)."""
    from moesim.specs.catalog import model_rows
    from moesim.present.tables import table

    rows = model_rows()
    if as_json:
        _echo_json(rows)
        return
    click.echo(table(["id", "total B", "active B", "experts", "top-k", "shared", "MoE layers", "KV B/token"],
                     [[r["id"], f"{r['total_params'] / 1e9:.2f}", f"{r['active_params'] / 1e9:.2f}",
                       r["experts"], r["top_k"], r["shared_experts"], r["moe_layers"],
                       f"{r['kv_bytes_per_token']:,}"] for r in rows]))
    click.echo("\nactive = LM head included, input embedding excluded (see docs/models.md)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def systems(as_json: bool) -> None:
    """Built-in systems: GPU, NVLink domain, scale-out per GPU."""
    from moesim.specs.catalog import system_rows
    from moesim.present.tables import table

    rows = system_rows()
    if as_json:
        _echo_json(rows)
        return
    click.echo(table(["id", "gpu", "GPUs/node", "NVLink domain", "NVLink GB/s/dir", "NIC Gb/s/GPU", "HBM GiB"],
                     [[r["id"], r["gpu"], r["gpus_per_node"], r["nvlink_domain_gpus"],
                       f"{r['nvlink_GBps_per_direction']:g}", f"{r['scale_out_Gbps_per_gpu']:g}",
                       f"{r['hbm_capacity_bytes'] / 2**30:.2f}"] for r in rows]))


@main.command(name="import-hf")
@click.argument("config_json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model YAML to write (written only if the import succeeds).")
@click.option("--id", "model_id", help="Model id (default: the output file name).")
def import_hf(config_json: str, output: str, model_id: Optional[str]) -> None:
    """Convert a Hugging Face config.json into a moesim model YAML.

    \b
    Example:
      moesim import-hf path/to/config.json -o workloads/models/my-moe.yaml
    """
    import json
    from pathlib import Path

    from moesim.core.errors import MoesimError
    from moesim.specs.hf_import import convert, to_yaml
    from moesim.core.result import write_atomic

    try:
        config = json.loads(Path(config_json).read_text())
    except OSError as exc:
        raise MoesimError(f"cannot read file ({exc.strerror})", file=config_json, fix="check the path") from None
    except json.JSONDecodeError as exc:
        raise MoesimError(f"malformed JSON: {exc.msg} at line {exc.lineno}", file=config_json,
                          fix="give the model's config.json as downloaded") from None
    spec = convert(config, model_id=model_id or Path(output).stem, source=config_json)
    write_atomic(output, to_yaml(spec))
    click.echo(f"wrote {output}")


@main.command()
@SCENARIO_ARG
@override_options
@click.option("--tokens", type=int, help="Tokens routed by the EP group (default: one forward of the workload).")
@click.option("--skew", default="uniform", show_default=True,
              help="uniform | zipf:S | dirichlet:A | file:PATH (layers x experts CSV/NPY) | trace:PATH (NPY ids).")
@click.option("--placement", help="contiguous | round_robin | eplb | eplb:R (R redundant experts). "
                                  "Default: eplb when the scenario has redundant experts, else contiguous.")
@click.option("--layer", type=int, default=0, show_default=True, help="Which MoE layer (0-based among MoE layers).")
@click.option("--node-limit", type=int, help="Node-limited routing: at most this many nodes per token.")
@click.option("--capacity-factor", type=float, help="Drop token-expert pairs beyond this capacity (GShard/Switch).")
@click.option("--dispatch-dtype", default="fp8", show_default=True, help="fp8 (with per-128 scales) or bf16.")
@click.option("--json", "as_json", is_flag=True, help="Print loads, imbalance and byte matrices as JSON.")
def route(scenario: Optional[str], tokens: Optional[int], skew: str, placement: Optional[str], layer: int,
          node_limit: Optional[int], capacity_factor: Optional[float], dispatch_dtype: str, as_json: bool,
          **flags: Any) -> None:
    """Expert loads, per-GPU load, imbalance and dispatch/combine traffic of one MoE layer.

    \b
    Examples:
      moesim route
      moesim route --skew zipf:1.0 --placement eplb:32 --gpus 64 --ep 64
      moesim route --model mixtral-8x7b --gpus 8 --ep 8 --skew dirichlet:0.5 --json
    """
    from moesim.sim.ep_summary import parse_placement, route_summary
    from moesim.cluster.scenario import load_scenario
    from moesim.present.tables import route_table

    overrides = _overrides(flags)
    if placement:
        _, redundant = parse_placement(placement, 0)
        if ":" in placement:
            overrides["experts.redundant"] = redundant
    sc = load_scenario(scenario, overrides)
    summary = route_summary(sc, skew=skew, placement=placement, tokens=tokens, layer=layer,
                            node_limit=node_limit, capacity_factor=capacity_factor, dispatch_dtype=dispatch_dtype)
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    if as_json:
        _echo_json(summary)
    else:
        click.echo(route_table(summary))


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
        _echo_json(result)
    else:
        click.echo(bench_table(result, tokens))


@main.command()
@click.option("--system", "system_name", help="System name or YAML path (default dgx-h100; with --ep, the scenario's).")
@click.option("--gpus", type=int, help="GPUs taking part (default 8; with --ep, the scenario's EP size).")
@click.option("--op", type=click.Choice(["all_to_all", "all_reduce", "all_gather", "reduce_scatter", "send_recv"]),
              default="all_reduce", show_default=True, help="Collective.")
@click.option("--bytes", "size", default="1G", show_default=True,
              help="Per-rank size as nccl-tests prints it (1M, 8G), or a doubling sweep 1K:8G.")
@click.option("--algo", help="Algorithm (ring, nvls, direct, p2p); default: NCCL's choice for the size.")
@click.option("--ep", "ep_mode", is_flag=True,
              help="Time one MoE layer's dispatch and combine from routed traffic instead (uses SCENARIO options).")
@click.option("--scenario", "scenario", type=click.Path(dir_okay=False), help="With --ep: scenario YAML (default: built-in).")
@click.option("--skew", default="uniform", show_default=True, help="With --ep: routing skew.")
@click.option("--placement", help="With --ep: expert placement.")
@click.option("--tokens", type=int, help="With --ep: tokens routed by the EP group.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def comm(system_name: Optional[str], gpus: Optional[int], op: str, size: str, algo: Optional[str], ep_mode: bool,
         scenario: Optional[str], skew: str, placement: Optional[str], tokens: Optional[int], as_json: bool) -> None:
    """Time, algbw and busbw of one collective (nccl-tests definitions), from the topology.

    \b
    Examples:
      moesim comm --system dgx-h100 --gpus 16 --op all_to_all --bytes 1G
      moesim comm --system gb200-nvl72 --gpus 72 --op all_reduce --bytes 1K:8G
      moesim comm --ep --gpus 64 --skew zipf:1.0 --placement eplb:64
    """
    from moesim.present.tables import comm_table, ep_comm_table

    if ep_mode:
        from moesim.sim.ep_summary import ep_comm_summary
        from moesim.cluster.scenario import load_scenario
        overrides = {"system": system_name, "gpus": gpus, "parallel.ep": gpus}
        redundant = (placement or "").partition(":")[2]
        if redundant.isdigit():
            overrides["experts.redundant"] = int(redundant)
        sc = load_scenario(scenario, overrides)
        result = ep_comm_summary(sc, skew=skew, placement=placement, tokens=tokens)
        if as_json:
            _echo_json(result)
        else:
            click.echo(ep_comm_table(result))
        return
    from moesim.sim.comm_sweep import comm_rows

    system_name, gpus = system_name or "dgx-h100", gpus if gpus is not None else 8
    rows = comm_rows(system_name, gpus, op, size, algo)
    if as_json:
        _echo_json({"system": system_name, "gpus": gpus, "op": op, "rows": rows})
    else:
        click.echo(comm_table(system_name, gpus, op, rows))


@main.command()
@click.option("--cases", "cases_file", required=True, type=click.Path(dir_okay=False),
              help="Validation cases YAML (schema of the open validation set).")
@click.option("--profile", "profiles", multiple=True,
              help="Calibration profile applied to the cases on the GPU it was fitted on (repeat: one per GPU).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Write a parity plot (predicted vs measured, one marker per what) as PNG/PDF/SVG.")
@click.option("--write-residuals", "residuals_file", type=click.Path(dir_okay=False),
              help="Write the residual summary per `what` (what simulate's error bars rest on) as YAML.")
@click.option("--json", "as_json", is_flag=True, help="Print cases, MAPE per what, and skipped cases as JSON.")
def validate(cases_file: str, profiles: tuple[str, ...], report_file: Optional[str], residuals_file: Optional[str],
             as_json: bool) -> None:
    """Predict published measurements and report signed errors and MAPE per `what`.

    \b
    Example:
      moesim validate --cases validation/cases.yaml --json
    """
    from moesim.present.tables import validation_table
    from moesim.validation.run import load_cases, validate as run

    profile = ", ".join(profiles) or None
    result = run(load_cases(cases_file), profile=list(profiles))
    if report_file:
        from moesim.present.plots import parity_plot
        parity_plot(result, report_file)
    if residuals_file:
        from moesim.calibration.uncertainty import write_residuals
        write_residuals(residuals_file, result, cases_file=cases_file, profile=profile)
    if as_json:
        _echo_json(result)
    else:
        click.echo(validation_table(result))


@bench.command(name="network")
@click.option("--gpus", "sizes", default="8,72,256,1024", show_default=True,
              help="Comma-separated GPU counts of the uniform all-to-all.")
@click.option("--repeats", type=int, default=2, show_default=True, help="Timed solves (best is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_network(sizes: str, repeats: int, as_json: bool) -> None:
    """Max-min solve of a uniform all-to-all: Numba kernel vs NumPy twin, same run."""
    from moesim.core.errors import MoesimError
    from moesim.bench.network import network_benchmark
    from moesim.present.tables import network_bench_table

    try:
        counts = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise MoesimError(f"cannot read {sizes!r}", field="--gpus", fix="give GPU counts like 8,72,256") from None
    if any(c < 2 for c in counts):
        raise MoesimError("every GPU count must be >= 2", field="--gpus", fix="give GPU counts like 8,72,256")
    result = network_benchmark(sizes=counts, repeats=repeats)
    if as_json:
        _echo_json(result)
    else:
        click.echo(network_bench_table(result))


@main.command()
@SCENARIO_ARG
@override_options
@click.option("--overlap", type=click.Choice(["none", "two_batch"]), default="none", show_default=True,
              help="Two-batch overlap hides one micro-batch's all-to-all behind the other's compute.")
@click.option("--skew", default="uniform", show_default=True, help="Routing skew (as in `moesim route`).")
@click.option("--placement", help="Expert placement (as in `moesim route`).")
@click.option("--trace", "trace_file", type=click.Path(dir_okay=False), help="Write a Chrome/Perfetto trace JSON.")
@click.option("--prefill", "prefill_file", type=click.Path(dir_okay=False),
              help="Prefill-pool scenario: simulate prefill/decode disaggregation (SCENARIO is the decode pool).")
@click.option("--profile", help="Calibration profile (from `moesim calibrate`): path or name in topologies/calibration/.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Also write a report of this result (.html or .pdf), as `moesim report` does.")
@click.option("--json", "as_json", is_flag=True, help="Print the Result as JSON.")
def simulate(scenario: Optional[str], overlap: str, skew: str, placement: Optional[str], trace_file: Optional[str],
             prefill_file: Optional[str], profile: Optional[str], report_file: Optional[str], as_json: bool,
             **flags: Any) -> None:
    """Simulate one serving step: tokens/s per GPU, TPOT or TTFT, where the time goes.

    \b
    Examples:
      moesim simulate
      moesim simulate --overlap two_batch --trace step.json
      moesim simulate --gpus 32 --ep 32 --skew zipf:1.0 --placement eplb:32 --json
      moesim simulate --report report.html
    """
    from moesim.core.result import to_json, write_atomic
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate as run
    from moesim.present.tables import simulate_table

    if report_file:
        from moesim.present.report import check_output
        check_output(report_file)
    overrides = _overrides(flags)
    if profile:
        overrides["runtime.profile"] = profile
    sc = load_scenario(scenario, overrides)
    if prefill_file:
        from moesim.sim.simulate import simulate_disaggregated
        result = simulate_disaggregated(load_scenario(prefill_file), sc, overlap=overlap, skew=skew, placement=placement)
        if report_file:
            from moesim.present.report import write_report
            write_report([("disaggregated", result, "moesim simulate --prefill (this run)")], report_file)
        if as_json:
            _echo_json(result)
        else:
            m = result["metrics"]
            click.echo(f"disaggregated: {m['requests_per_s']:,.1f} requests/s, {m['output_tokens_per_s_per_gpu']:,.0f} "
                       f"output tokens/s per GPU over both pools, TTFT {m['ttft_ms']:.1f} ms, TPOT {m['tpot_ms']:.2f} ms, "
                       f"bound by the {m['bound_by']} pool")
        return
    result = run(sc, overlap=overlap, skew=skew, placement=placement, trace=trace_file is not None)
    trace = result.pop("_trace", None)
    if trace_file:
        write_atomic(trace_file, to_json(trace, indent=None))
    if report_file:
        from moesim.present.report import write_report
        write_report([("simulate", result, "moesim simulate (this run)")], report_file)
    if as_json:
        _echo_json(result)
    else:
        click.echo(simulate_table(result))


@bench.command(name="engine")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_engine(as_json: bool) -> None:
    """Wall time of one DeepSeek-V3 decode step at EP144 and one 2048-GPU training step."""
    from moesim.bench.engine import engine_benchmark

    result = engine_benchmark()
    if as_json:
        _echo_json(result)
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
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the results JSON (only if the check passed).")
@click.option("--json", "as_json", is_flag=True, help="Print the results record as JSON instead of the table.")
def bench_micro(name: str, backend: str, ranks: Optional[int], quick: bool, output: Optional[str], as_json: bool) -> None:
    """Microbenchmarks for calibration (PyTorch harness; needs `pip install -e .[bench]`).

    Each prints its parameters, checks the data it moved, then a fixed table; exit 1 if the check failed.

    \b
    Examples:
      moesim bench micro collective --backend cpu --quick
      moesim bench micro gemm -o results/gemm.json          # on a GPU machine
    """
    from moesim.bench.micro.run import format_table, run_benchmark

    data = run_benchmark(name, backend=backend, ranks=ranks, quick=quick, json_path=output)
    if as_json:
        _echo_json(data)
    else:
        click.echo(format_table(data))
    if not data["check"]["passed"]:
        click.echo(f"error: {name}: the benchmark's own correctness check failed; no results file written", err=True)
        sys.exit(1)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Profile YAML to write.")
@click.option("--gpu", "gpu_id", help="GPU id (default: inferred from the results' device name).")
@click.option("--system", "system_id", help="System id (default: the one system built from that GPU).")
def calibrate(results: tuple[str, ...], output: str, gpu_id: Optional[str], system_id: Optional[str]) -> None:
    """Fit a hardware profile from microbenchmark results (GEMM efficiency, HBM, link alpha-beta).

    \b
    Examples:
      moesim calibrate results/gemm.json results/memcpy.json results/collective.json -o profile.yaml
      moesim simulate --profile profile.yaml
    """
    from moesim.calibration.fit import fit_profile, infer_ids, load_results, write_profile

    data = load_results(results)
    gpu_id, system_id = infer_ids(data, gpu_id=gpu_id, system_id=system_id)
    profile = fit_profile(data, gpu_id=gpu_id, system_id=system_id)
    write_profile(profile, output, sources=list(results), command=" ".join(["moesim calibrate", *sys.argv[2:]]))
    click.echo(f"wrote {output} ({gpu_id}, {system_id})")


@main.command()
@click.argument("space_file", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Cache folder: finished points are kept, so an interrupted sweep resumes.")
@click.option("--dask", "dask_address", help="Run on a Dask cluster: scheduler address, e.g. tcp://127.0.0.1:8786.")
@click.option("--set", "sets", multiple=True,
              help="Change applied to every point: PATH=VALUE (scenario, system.<field> or skew/overlap/placement).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the whole plan as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Also write a report of the plan (.html or .pdf), as `moesim report` does.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(space_file: str, workers: int, cache_dir: Optional[str], dask_address: Optional[str],
         sets: tuple[str, ...], output: Optional[str], report_file: Optional[str], as_json: bool) -> None:
    """Search configurations under SLOs: prune by VRAM, simulate, feasible set, Pareto fronts, best.

    \b
    Example:
      moesim plan workloads/spaces/example-dsv3-decode.yaml --workers 2 --cache .moesim-cache
      moesim plan SPACE.yaml --set system.nvlink_GBps=900 --set skew=zipf:1.2
    """
    from moesim.core.errors import MoesimError
    from moesim.planning.planner import load_space, plan as run_plan
    from moesim.core.result import to_json, write_atomic
    from moesim.present.tables import plan_table

    if workers < 1:
        raise MoesimError(f"workers must be >= 1, got {workers}", field="--workers", fix="give 1 or more")
    if report_file:
        from moesim.present.report import check_output
        check_output(report_file)
    result = run_plan(load_space(space_file), workers=workers, cache_dir=cache_dir, dask=dask_address,
                      progress=sys.stderr.isatty() and not as_json, sets=list(sets))
    if output:
        write_atomic(output, to_json(result))
    if report_file:
        from moesim.present.report import write_report
        write_report([("plan", json.loads(to_json(result)), f"moesim plan {space_file} (this run)")], report_file)
    if as_json:
        _echo_json(result)
    else:
        click.echo(plan_table(result))


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Report file: .html (one self-contained page) or .pdf.")
def report(inputs: tuple[str, ...], output: str) -> None:
    """Write an HTML or PDF report of simulate, plan and validate outputs (JSON).

    Each INPUT is recognised by its contents: `moesim simulate --json`, `moesim plan -o FILE`
    or `--json`, `moesim validate --json`. The report states each input's model, system, split,
    seed and code version, the assumptions behind its numbers, its tables and figures.

    \b
    Examples:
      moesim simulate --json > sim.json && moesim report sim.json -o report.html
      moesim report sim.json plan.json validation.json -o review.pdf
    """
    from moesim.present.report import build_report

    path = build_report(list(inputs), output)
    click.echo(f"wrote {path}")


@main.command()
@SCENARIO_ARG
@click.option("--set", "sets", multiple=True,
              help="A change PATH=VALUE (join several with ';' to apply them together); repeat for more variants.")
@click.option("--json", "as_json", is_flag=True, help="Print base, variants and relative changes as JSON.")
def whatif(scenario: Optional[str], sets: tuple[str, ...], as_json: bool) -> None:
    """Run a base scenario against single changes and print the deltas side by side.

    \b
    Examples:
      moesim whatif --set system.nvlink_GBps=900 --set workload.batch=128 --set skew=zipf:1.2
      moesim whatif my.yaml --set system.nic_Gbps=800 --set "gpus=32;parallel.ep=32"
    """
    from moesim.present.tables import whatif_table
    from moesim.planning.whatif import whatif as run

    result = run(scenario, list(sets))
    if as_json:
        _echo_json(result)
    else:
        click.echo(whatif_table(result))


@bench.command(name="planner")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract.")
def bench_planner(as_json: bool) -> None:
    """Configurations simulated per minute with 1 and 2 workers; VRAM-prune cost per configuration."""
    from moesim.bench.planner import planner_benchmark

    result = planner_benchmark()
    if as_json:
        _echo_json(result)
        return
    p = result["planner"]
    click.echo(f"# moesim bench planner: decode sweep of {p['configs']} configurations ({p['expanded']} expanded, "
               f"{p['pruned']} pruned)\n"
               f"1 worker: {p['configs_per_min_1_worker']:,.0f} configs/min; 2 workers: "
               f"{p['configs_per_min_2_workers']:,.0f} configs/min (x{p['scaling_2_over_1']:.2f}); "
               f"VRAM prune {p['prune_ms_per_config']:.2f} ms per configuration")
