"""`moesim route`, `comm`, `simulate`: one MoE layer's routing, one collective, one simulated step."""
from __future__ import annotations

from typing import Any, Optional

import click

from moesim.cli.app import (REPORT_SUFFIXES, SCENARIO_ARG, OutputFile, echo_json, main, override_options,
                            profile_overrides, scenario_overrides)


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
      moesim route --skew zipf:1.0 --placement eplb:64 --gpus 64 --ep 64
      moesim route --model mixtral-8x7b --gpus 8 --ep 8 --skew dirichlet:0.5 --json
    """
    from moesim.cluster.scenario import load_scenario
    from moesim.costs.placement import parse_placement
    from moesim.present.tables import route_table
    from moesim.sim.ep_summary import route_summary

    overrides = scenario_overrides(flags)
    if placement:
        _, redundant = parse_placement(placement, 0)
        if ":" in placement:
            overrides["experts.redundant"] = redundant
    sc = load_scenario(scenario, overrides)
    summary = route_summary(sc, skew=skew, placement=placement, tokens=tokens, layer=layer,
                            node_limit=node_limit, capacity_factor=capacity_factor, dispatch_dtype=dispatch_dtype)
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    if as_json:
        echo_json(summary)
    else:
        click.echo(route_table(summary))


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
        from moesim.cluster.scenario import load_scenario
        from moesim.sim.ep_summary import ep_comm_summary
        overrides = {"system": system_name, "gpus": gpus, "parallel.ep": gpus}
        redundant = (placement or "").partition(":")[2]
        if redundant.isdigit():
            overrides["experts.redundant"] = int(redundant)
        sc = load_scenario(scenario, overrides)
        result = ep_comm_summary(sc, skew=skew, placement=placement, tokens=tokens)
        if as_json:
            echo_json(result)
        else:
            click.echo(ep_comm_table(result))
        return
    from moesim.sim.comm_sweep import comm_rows

    system_name, gpus = system_name or "dgx-h100", gpus if gpus is not None else 8
    rows = comm_rows(system_name, gpus, op, size, algo)
    if as_json:
        echo_json({"system": system_name, "gpus": gpus, "op": op, "rows": rows})
    else:
        from moesim.specs.hardware import load_system
        click.echo(comm_table(f"{system_name}: {load_system(system_name).fleet_label(gpus)}", op, rows))


@main.command()
@SCENARIO_ARG
@override_options
@click.option("--overlap", type=click.Choice(["none", "two_batch"]), default="none", show_default=True,
              help="Two-batch overlap hides one micro-batch's all-to-all behind the other's compute.")
@click.option("--skew", default="uniform", show_default=True, help="Routing skew (as in `moesim route`).")
@click.option("--placement", help="Expert placement (as in `moesim route`).")
@click.option("--trace", "trace_file", type=OutputFile(".json"), help="Write a Chrome/Perfetto trace JSON.")
@click.option("--prefill", "prefill_file", type=click.Path(dir_okay=False),
              help="Prefill-pool scenario: simulate prefill/decode disaggregation (SCENARIO is the decode pool).")
@click.option("--profile", multiple=True,
              help="Calibration profile (from `moesim calibrate`): path or name in topologies/calibration/; a kernel "
                   "profile (from `moesim calibrate --cases`) or `spec` (kernel models at sourced defaults only) "
                   "replaces the shipped kernel fit. Repeat to give one of each.")
@click.option("--report", "report_file", type=OutputFile(*REPORT_SUFFIXES),
              help="Also write a report of this result (.html or .pdf), as `moesim report` does.")
@click.option("--ignore-memory", is_flag=True,
              help="Simulate a deployment that does not fit in VRAM anyway; every figure then says it cannot run.")
@click.option("--json", "as_json", is_flag=True, help="Print the Result as JSON.")
def simulate(scenario: Optional[str], overlap: str, skew: str, placement: Optional[str], trace_file: Optional[str],
             prefill_file: Optional[str], profile: tuple[str, ...], report_file: Optional[str], ignore_memory: bool,
             as_json: bool, **flags: Any) -> None:
    """Simulate one serving step: tokens/s per GPU, TPOT or TTFT, where the time goes.

    \b
    Examples:
      moesim simulate
      moesim simulate --overlap two_batch --trace step.json
      moesim simulate --gpus 32 --ep 32 --skew zipf:1.0 --placement eplb:32 --json
      moesim simulate --report report.html
    """
    from moesim.cluster.scenario import load_scenario
    from moesim.core.output import write_atomic
    from moesim.core.result import to_json
    from moesim.present.tables import simulate_table
    from moesim.sim.simulate import simulate as run

    overrides = scenario_overrides(flags)
    overrides.update(profile_overrides(profile))
    sc = load_scenario(scenario, overrides)
    if prefill_file:
        from moesim.core.errors import MoesimError
        from moesim.sim.simulate import simulate_disaggregated
        if trace_file:
            raise MoesimError("a trace is written for one pool's step, not for a disaggregated pair",
                              field="--trace", fix="trace each pool alone: moesim simulate POOL.yaml --trace FILE")
        result = simulate_disaggregated(load_scenario(prefill_file), sc, overlap=overlap, skew=skew, placement=placement,
                                        ignore_memory=ignore_memory)
        if report_file:
            from moesim.present.report import write_report
            write_report([("disaggregated", result, "moesim simulate --prefill (this run)")], report_file)
        if as_json:
            echo_json(result)
        else:
            m = result["metrics"]
            for pool, pool_result in result["pools"].items():
                for warning in pool_result.get("warnings", []):
                    click.echo(f"WARNING ({pool} pool): {warning}")
            click.echo(f"disaggregated: {m['requests_per_s']:,.1f} requests/s, {m['output_tokens_per_s_per_gpu']:,.0f} "
                       f"output tokens/s per GPU over both pools, TTFT {m['ttft_ms']:.1f} ms, TPOT {m['tpot_ms']:.2f} ms, "
                       f"bound by the {m['bound_by']} pool")
        return
    result = run(sc, overlap=overlap, skew=skew, placement=placement, trace=trace_file is not None,
                 ignore_memory=ignore_memory)
    trace = result.pop("_trace", None)
    if trace_file:
        write_atomic(trace_file, to_json(trace, indent=None))
    if report_file:
        from moesim.present.report import write_report
        write_report([("simulate", result, "moesim simulate (this run)")], report_file)
    if as_json:
        echo_json(result)
    else:
        click.echo(simulate_table(result))
