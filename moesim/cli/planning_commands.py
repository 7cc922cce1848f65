"""`moesim plan` and `moesim whatif`: configuration search and single changes against a base."""
from __future__ import annotations

import json
import sys
from typing import Optional

import click

from moesim.cli.app import FIGURE_SUFFIXES, REPORT_SUFFIXES, SCENARIO_ARG, OutputFile, OutputFolder, echo_json, main


@main.command()
@click.argument("space_file", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--cache", "cache_dir", type=OutputFolder(),
              help="Cache folder: finished points are kept, so an interrupted sweep resumes.")
@click.option("--dask", "dask_address", help="Run on a Dask cluster: scheduler address, e.g. tcp://127.0.0.1:8786.")
@click.option("--set", "sets", multiple=True,
              help="Change applied to every point: PATH=VALUE (scenario, system.<field> or skew/overlap/placement).")
@click.option("-o", "--output", type=OutputFile(".json"), help="Write the whole plan as JSON.")
@click.option("--report", "report_file", type=OutputFile(*REPORT_SUFFIXES),
              help="Also write a report of the plan (.html or .pdf), as `moesim report` does.")
@click.option("--front", "front_file", type=OutputFile(*FIGURE_SUFFIXES),
              help="A space with a load: write the throughput-interactivity front (tokens/s per GPU against "
                   "tokens/s per user, one curve per system) as .png, .pdf or .svg.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(space_file: str, workers: int, cache_dir: Optional[str], dask_address: Optional[str],
         sets: tuple[str, ...], output: Optional[str], report_file: Optional[str], front_file: Optional[str],
         as_json: bool) -> None:
    """Search configurations under SLOs: prune by VRAM, simulate, feasible set, Pareto fronts, best.

    \b
    Example:
      moesim plan workloads/spaces/example-dsv3-decode.yaml --workers 2 --cache .moesim-cache
      moesim plan SPACE.yaml --set system.nvlink_GBps=900 --set skew=zipf:1.2
      moesim plan workloads/spaces/example-serve-load.yaml --workers 2 --front front.png

    A space with `load:` serves every point under that load (`moesim serve`) instead of one
    step, agg and disagg as its `mode` lists, and ranks them by percentile SLOs.
    """
    from moesim.core.errors import MoesimError
    from moesim.core.output import write_atomic
    from moesim.core.result import to_json
    from moesim.planning.planner import plan as run_plan
    from moesim.planning.space import load_space
    from moesim.present.tables import plan_table

    if workers < 1:
        raise MoesimError(f"workers must be >= 1, got {workers}", field="--workers", fix="give 1 or more")
    space = load_space(space_file)
    if front_file and space.load is None:
        raise MoesimError("the throughput-interactivity front needs a space with a load", field="--front",
                          fix="add load: {concurrency: C, isl: N, osl: M} to the space, or leave out --front")
    result = run_plan(space, workers=workers, cache_dir=cache_dir, dask=dask_address,
                      progress=sys.stderr.isatty() and not as_json, sets=list(sets))
    if output:
        write_atomic(output, to_json(result))
    if front_file:
        from moesim.present.plots import front_plot
        front_plot(json.loads(to_json(result)), front_file)
    if report_file:
        from moesim.present.report import write_report
        write_report([("plan", json.loads(to_json(result)), f"moesim plan {space_file} (this run)")], report_file)
    if as_json:
        echo_json(result)
    else:
        click.echo(plan_table(result))


@main.command()
@SCENARIO_ARG
@click.option("--set", "sets", multiple=True,
              help="A change PATH=VALUE (join several with ';' to apply them together); repeat for more variants.")
@click.option("--ignore-memory", is_flag=True,
              help="Simulate changes that do not fit in VRAM anyway; their rows then say they cannot run.")
@click.option("--json", "as_json", is_flag=True, help="Print base, variants and relative changes as JSON.")
def whatif(scenario: Optional[str], sets: tuple[str, ...], ignore_memory: bool, as_json: bool) -> None:
    """Run a base scenario against single changes and print the deltas side by side.

    \b
    Examples:
      moesim whatif --set system.nvlink_GBps=900 --set workload.batch=128 --set skew=zipf:1.2
      moesim whatif my.yaml --set system.nic_Gbps=800 --set "gpus=32;parallel.ep=32"
    """
    from moesim.planning.whatif import whatif as run
    from moesim.present.tables import whatif_table

    result = run(scenario, list(sets), ignore_memory=ignore_memory)
    if as_json:
        echo_json(result)
    else:
        click.echo(whatif_table(result))
