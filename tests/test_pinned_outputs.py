"""Pinned outputs: the main commands give the same answers as when the pins were taken.

Pinned before the package was reorganised into layer folders (issue 13) and kept since: a move,
a split or a rename of code must not change a single number. A change that is *meant* to change
a result regenerates the pins in the same commit and says why:

    python tests/test_pinned_outputs.py --regenerate

What is compared: the command's JSON with the fields that describe the run rather than the
answer removed (`provenance.code`: the commit; `wall_s`: the wall clock) and every float written
with 12 significant digits, so that a last-bit difference from another BLAS build does not fail
it while any modelling change does. Within one machine the outputs are byte-identical (the
determinism tests check that).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tests" / "data" / "pinned_outputs.json"

COMMANDS: dict[str, list[str]] = {
    "simulate-default": ["simulate", "--json"],
    "route-default": ["route", "--json"],
    "route-eplb-zipf": ["route", "--skew", "zipf:1.0", "--placement", "eplb:64", "--gpus", "64",
                        "--ep", "64", "--json"],
    "comm-all-to-all-sweep": ["comm", "--system", "dgx-h100", "--gpus", "16", "--op", "all_to_all",
                              "--bytes", "1K:1G", "--json"],
    "comm-all-reduce-nvl72": ["comm", "--system", "gb200-nvl72", "--gpus", "72", "--op",
                              "all_reduce", "--bytes", "1K:8G", "--json"],
    "comm-ep-layer": ["comm", "--ep", "--gpus", "64", "--skew", "zipf:1.0", "--placement",
                      "eplb:64", "--json"],
    "validate-open-cases": ["validate", "--cases", str(ROOT / "validation" / "cases.yaml"), "--json"],
    "plan-example-space": ["plan", str(ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml"),
                           "--json"],
}

RUN_DESCRIPTION_KEYS = {"wall_s"}


def _normalised(value):
    """The answer without what describes the run; floats at 12 significant digits."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in RUN_DESCRIPTION_KEYS:
                continue
            if key == "provenance" and isinstance(item, dict):
                item = {k: v for k, v in item.items() if k != "code"}
            out[key] = _normalised(item)
        return out
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def output_digest(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    if result.exit_code != 0:
        raise AssertionError(f"moesim {' '.join(args)} exited {result.exit_code}: {result.output[-2000:]}")
    canonical = json.dumps(_normalised(json.loads(result.output)), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_matches_its_pin(name: str) -> None:
    pins = json.loads(PINS.read_text())
    assert name in pins, f"no pin for {name}: run python tests/test_pinned_outputs.py --regenerate"
    assert output_digest(COMMANDS[name]) == pins[name], (
        f"`moesim {' '.join(COMMANDS[name])}` changed its answer; if that is intended, regenerate "
        "the pins (see this file's docstring) and say why in the commit")


def test_normalisation_keeps_the_answer() -> None:
    """Only run-description fields are dropped: a changed number still changes the digest."""
    base = {"metrics": {"tpot_ms": 28.259726184920748}, "wall_s": 1.0,
            "provenance": {"code": {"commit": "a"}, "profile": "p"}}
    same_answer = {"metrics": {"tpot_ms": 28.259726184920748}, "wall_s": 9.0,
                   "provenance": {"code": {"commit": "b"}, "profile": "p"}}
    other_answer = {"metrics": {"tpot_ms": 28.2597262}, "wall_s": 1.0,
                    "provenance": {"code": {"commit": "a"}, "profile": "p"}}
    other_profile = {"metrics": {"tpot_ms": 28.259726184920748}, "wall_s": 1.0,
                     "provenance": {"code": {"commit": "a"}, "profile": "q"}}
    assert _normalised(base) == _normalised(same_answer)
    assert _normalised(base) != _normalised(other_answer)
    assert _normalised(base) != _normalised(other_profile)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_pinned_outputs.py --regenerate")
    PINS.write_text(json.dumps({name: output_digest(args) for name, args in sorted(COMMANDS.items())},
                               indent=2, sort_keys=True) + "\n")
    print(f"wrote {PINS}")
