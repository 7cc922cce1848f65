"""`moesim validate` and `moesim calibrate`: predictions against measurements, profiles fitted from results."""
from __future__ import annotations

import sys
from typing import Optional

import click

from moesim.cli.app import FIGURE_SUFFIXES, YAML_SUFFIXES, OutputFile, echo_json, main


@main.command()
@click.option("--cases", "cases_file", required=True, type=click.Path(dir_okay=False),
              help="Validation cases YAML (schema of the open validation set).")
@click.option("--profile", "profiles", multiple=True,
              help="Calibration profile applied to the cases on the GPU it was fitted on (repeat: one per GPU).")
@click.option("--report", "report_file", type=OutputFile(*FIGURE_SUFFIXES),
              help="Write a parity plot (predicted vs measured, one marker per what) as PNG/PDF/SVG.")
@click.option("--write-residuals", "residuals_file", type=OutputFile(*YAML_SUFFIXES),
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
    from moesim.validation.cases import load_cases
    from moesim.validation.run import validate as run

    profile = ", ".join(profiles) or None
    result = run(load_cases(cases_file), profile=list(profiles))
    if report_file:
        from moesim.present.plots import parity_plot
        parity_plot(result, report_file)
    if residuals_file:
        from moesim.calibration.uncertainty import write_residuals
        write_residuals(residuals_file, result, cases_file=cases_file, profile=profile)
    if as_json:
        echo_json(result)
    else:
        click.echo(validation_table(result))


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=OutputFile(*YAML_SUFFIXES), help="Profile YAML to write.")
@click.option("--gpu", "gpu_id", help="GPU id (default: inferred from the results' device name).")
@click.option("--system", "system_id", help="System id (default: the one system built from that GPU).")
def calibrate(results: tuple[str, ...], output: str, gpu_id: Optional[str], system_id: Optional[str]) -> None:
    """Fit a hardware profile from microbenchmark results (GEMM efficiency, HBM, link alpha-beta).

    \b
    Examples:
      moesim calibrate results/gemm.json results/memcpy.json results/collective.json -o profile.yaml
      moesim simulate --profile profile.yaml
    """
    from moesim.calibration.fit import fit_profile, infer_ids
    from moesim.calibration.profile import write_profile
    from moesim.calibration.results import load_results

    data = load_results(results)
    gpu_id, system_id = infer_ids(data, gpu_id=gpu_id, system_id=system_id)
    profile = fit_profile(data, gpu_id=gpu_id, system_id=system_id)
    write_profile(profile, output, sources=list(results), command=" ".join(["moesim calibrate", *sys.argv[2:]]))
    click.echo(f"wrote {output} ({gpu_id}, {system_id})")
