"""Fixtures shared by test modules."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from moesim.cli import main


@pytest.fixture
def same_bytes_twice(tmp_path):
    """Run a moesim command twice with `--json --trace`: both must exit 0 and print and trace the same
    bytes (same inputs and seed, bit-identical results); returns the JSON text."""
    def run(args: list[str]) -> str:
        runner, outs = CliRunner(), []
        for name in ("a.json", "b.json"):
            out = runner.invoke(main, args + ["--json", "--trace", str(tmp_path / name)])
            assert out.exit_code == 0, out.output
            outs.append(out.stdout)
        assert outs[0] == outs[1]
        assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
        return outs[0]
    return run
