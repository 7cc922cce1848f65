"""The `moesim` command group, the options several commands share, and the one-line error contract.

Heavy modules are imported inside commands so `moesim --help` starts instantly.
"""
from __future__ import annotations

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
        except click.UsageError as exc:  # a flag click itself refused: same one-line contract
            command = exc.ctx.command_path if exc.ctx is not None else "moesim"
            message = " ".join(exc.format_message().split()).rstrip(".")
            click.echo(f"error: {message}; see `{command} --help`", err=True)
            sys.exit(2)


class OutputFile(click.ParamType):
    """A file moesim will write: checked when the command line is read, before any work
    (`core.output.check_output_path`), so a bad path costs nothing."""

    name = "file"

    def __init__(self, *suffixes: str):
        self.suffixes = suffixes or None

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from moesim.core.output import check_output_path
        field = "/".join(param.opts) if param is not None else "output"
        return str(check_output_path(value, field=field, suffixes=self.suffixes))


class OutputFolder(click.ParamType):
    """A folder moesim will fill (a cache), checked like an output file."""

    name = "folder"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from moesim.core.output import check_output_folder
        return str(check_output_folder(value, field="/".join(param.opts) if param is not None else "folder"))


REPORT_SUFFIXES = (".html", ".pdf")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
YAML_SUFFIXES = (".yaml", ".yml")


def override_options(func, *, workload: bool = True):
    """Flags that override fields of the scenario file (or of the built-in default); without
    `workload`, only the deployment's (a command that brings its own load: `serve`)."""
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
        click.option("--weights-dtype", help="Format of linear weights: bf16, fp8, fp8_block, mxfp8, mxfp4, nvfp4, int4_wo (see workloads/dtypes.yaml)."),
        click.option("--expert-dtype", help="Format of routed-expert weights, if different."),
        click.option("--kv-dtype", help="KV-cache format: bf16 or fp8."),
    ]
    if workload:
        options += [
            click.option("--batch", type=int, help="Serving: concurrent sequences per DP rank."),
            click.option("--input-len", type=int, help="Serving: prompt tokens per sequence."),
            click.option("--output-len", type=int, help="Serving: generated tokens per sequence."),
        ]
    for option in reversed(options):
        func = option(func)
    return func


def deployment_options(func):
    """`override_options` without the workload flags (--batch, --input-len, --output-len)."""
    return override_options(func, workload=False)


FLAG_PATHS = {
    "model": "model", "system": "system", "gpus": "gpus",
    "tp": "parallel.tp", "pp": "parallel.pp", "dp": "parallel.dp", "ep": "parallel.ep", "etp": "parallel.etp",
    "redundant_experts": "experts.redundant", "weights_dtype": "dtypes.weights",
    "expert_dtype": "dtypes.expert_weights", "kv_dtype": "dtypes.kv_cache",
    "batch": "workload.batch", "input_len": "workload.input_len", "output_len": "workload.output_len",
}


def scenario_overrides(flags: dict[str, Any]) -> dict[str, Any]:
    return {FLAG_PATHS[k]: v for k, v in flags.items() if k in FLAG_PATHS and v is not None}


def profile_overrides(profiles: tuple[str, ...]) -> dict[str, Any]:
    """`--profile` values as scenario overrides: a kernel profile or `spec` sets runtime.kernel_profile,
    a microbenchmark profile runtime.profile (at most one of each)."""
    from moesim.calibration.kernel_params import split_profiles
    from moesim.core.errors import MoesimError
    kernel, microbench = split_profiles(profiles)
    if len(microbench) > 1:
        raise MoesimError(f"two calibration profiles: {microbench[0]} and {microbench[1]}", field="--profile",
                          fix="give one microbenchmark profile (and at most one kernel profile or spec)")
    out: dict[str, Any] = {}
    if kernel:
        out["runtime.kernel_profile"] = kernel
    if microbench:
        out["runtime.profile"] = microbench[0]
    return out


def echo_json(data: Any) -> None:
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
