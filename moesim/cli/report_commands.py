"""`moesim report`: an HTML or PDF report of saved simulate, plan and validate outputs."""
from __future__ import annotations

import click

from moesim.cli.app import REPORT_SUFFIXES, OutputFile, main


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=OutputFile(*REPORT_SUFFIXES),
              help="Report file: .html (one self-contained page) or .pdf.")
def report(inputs: tuple[str, ...], output: str) -> None:
    """Write an HTML or PDF report of simulate, plan and validate outputs (JSON).

    Each INPUT is recognised by its contents: `moesim simulate --json`, `moesim serve --json`,
    `moesim plan -o FILE` or `--json`, `moesim validate --json`. The report states each input's
    model, system, split, seed and code version, the assumptions behind its numbers, its tables and
    figures. (A serve report with the per-request latency distributions: `moesim serve --report F`.)

    \b
    Examples:
      moesim simulate --json > sim.json && moesim report sim.json -o report.html
      moesim report sim.json plan.json validation.json -o review.pdf
    """
    from moesim.present.report import build_report

    path = build_report(list(inputs), output)
    click.echo(f"wrote {path}")
