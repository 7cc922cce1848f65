"""The `moesim` command line: click commands only; the work happens in the modules they call.

`app` holds the group and the shared options; each `*_commands` module registers the commands of
one layer below it. Heavy modules are imported inside commands so `moesim --help` starts instantly.
"""
from moesim.cli import (bench_commands, calibration_commands, planning_commands,  # noqa: F401  (registers commands)
                        report_commands, serve_commands, spec_commands, step_commands)
from moesim.cli.app import main

__all__ = ["main"]
