"""`moesim validate` and `moesim calibrate`: predictions against measurements, profiles fitted from results."""
from __future__ import annotations

import math
import sys
from typing import Optional

import click

from moesim.calibration.cv_modes import CV_MODES
from moesim.cli.app import FIGURE_SUFFIXES, YAML_SUFFIXES, OutputFile, echo_json, main


@main.command()
@click.option("--cases", "cases_file", required=True, type=click.Path(dir_okay=False),
              help="Validation cases YAML (schema of the open validation set).")
@click.option("--profile", "profiles", multiple=True,
              help="Microbenchmark profile applied to the cases on the GPU it was fitted on (repeat: one per GPU); "
                   "'spec' runs the kernel models from their sourced defaults, a kernel profile YAML from that fit.")
@click.option("--cv", type=click.Choice(list(CV_MODES)),
              help="Cross-validate: refit the parameters with each source (source), each serving deployment "
                   "configuration (config: all loads of one serving_load deployment), or every serving_load "
                   "deployment of one model (model) or one system (system) left out, and predict those cases.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that simulate the serving_load benchmarks (one deployment per task); the answers do "
                   "not depend on it.")
@click.option("--report", "report_file", type=OutputFile(*FIGURE_SUFFIXES),
              help="Write a parity plot (predicted vs measured, one marker per what) as PNG/PDF/SVG.")
@click.option("--write-residuals", "residuals_file", type=OutputFile(*YAML_SUFFIXES),
              help="Write the residual summary per `what` (what simulate's error bars rest on) as YAML.")
@click.option("--json", "as_json", is_flag=True, help="Print cases, MAPE per what, and skipped cases as JSON.")
def validate(cases_file: str, profiles: tuple[str, ...], cv: Optional[str], workers: int, report_file: Optional[str],
             residuals_file: Optional[str], as_json: bool) -> None:
    """Predict published measurements and report signed errors, MAPE and bias per `what`.

    The kernel models use the shipped fitted kernel profile (topologies/calibration/kernels.yaml);
    `--cv source` prints the leave-one-source-out MAPE beside the in-sample one; `--cv config` leaves
    out one serving deployment configuration at a time (serving_load cases); `--cv model` and `--cv
    system` every serving deployment of one model or one system: a model or machine never fitted on.

    \b
    Examples:
      moesim validate --cases validation/cases.yaml --json
      moesim validate --cases validation/cases.yaml --cv source
      moesim validate --cases validation/cases.yaml --profile spec
      moesim validate --cases validation/serving_load.yaml --workers 2 --cv config
      moesim validate --cases validation/serving_load.yaml --workers 2 --cv model
    """
    from moesim.calibration.kernel_params import split_profiles
    from moesim.present.tables import validation_table
    from moesim.validation.cases import load_cases
    from moesim.validation.run import validate as run

    kernel_profile, microbench = split_profiles(profiles)
    profile = ", ".join(microbench) or None
    result = run(load_cases(cases_file), profile=microbench, kernel_profile=kernel_profile, cv=cv, workers=workers)
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
@click.argument("results", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--cases", "cases_files", multiple=True, type=click.Path(dir_okay=False),
              help="Validation cases YAML: fit the kernel-model parameters to them (repeat for more files).")
@click.option("-o", "--output", required=True, type=OutputFile(*YAML_SUFFIXES), help="Profile YAML to write.")
@click.option("--gpu", "gpu_id", help="GPU id (default: inferred from the results' device name).")
@click.option("--system", "system_id", help="System id (default: the one system built from that GPU).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="--cases: processes that simulate the serving_load benchmarks; the fit does not depend on it.")
def calibrate(results: tuple[str, ...], cases_files: tuple[str, ...], output: str, gpu_id: Optional[str],
              system_id: Optional[str], workers: int) -> None:
    """Fit a hardware profile from microbenchmark results (GEMM efficiency, HBM, link alpha-beta),
    or, with --cases, the kernel-model parameters from published measurements.

    \b
    Examples:
      moesim calibrate results/gemm.json results/memcpy.json results/collective.json -o profile.yaml
      moesim simulate --profile profile.yaml
      moesim calibrate --cases validation/cases.yaml -o kernels.yaml
      moesim calibrate --cases validation/cases.yaml --cases validation/serving_load.yaml --workers 2 -o kernels.yaml
    """
    from moesim.core.errors import MoesimError
    if cases_files and results:
        raise MoesimError("give microbenchmark results or --cases, not both", field="RESULTS",
                          fix="run moesim calibrate twice: once per kind of input")
    if cases_files:
        from moesim.validation.calibrate_cases import calibrate_from_cases
        command = " ".join(["moesim calibrate", *sys.argv[2:]])
        def on_pass(n: int, move: float, name: str) -> None:
            click.echo(f"pass {n}: largest move {math.expm1(move):.1%} ({name or 'none'})", err=True)
        summary = calibrate_from_cases(list(cases_files), output, command=command, workers=workers, on_pass=on_pass)
        click.echo(summary)
        return
    if not results:
        raise MoesimError("nothing to fit", field="RESULTS",
                          fix="give microbenchmark results files (moesim bench) or --cases FILE")
    from moesim.calibration.fit import fit_profile, infer_ids
    from moesim.calibration.profile import write_profile
    from moesim.calibration.results import load_results

    data = load_results(results)
    gpu_id, system_id = infer_ids(data, gpu_id=gpu_id, system_id=system_id)
    profile = fit_profile(data, gpu_id=gpu_id, system_id=system_id)
    write_profile(profile, output, sources=list(results), command=" ".join(["moesim calibrate", *sys.argv[2:]]))
    click.echo(f"wrote {output} ({gpu_id}, {system_id})")
