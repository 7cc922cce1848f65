"""The shipped copies of the open validation cases parse, carry sources and match their README."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

VALIDATION = Path(__file__).resolve().parents[1] / "validation"
EXPECTED_CASES = {"cases.yaml": 258, "serving_load.yaml": 3646}


def _load(name: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((VALIDATION / name).read_text(), Loader=loader)


@pytest.mark.parametrize("name", sorted(EXPECTED_CASES))
def test_case_file_parses_with_unique_ids_and_sources(name: str) -> None:
    data = _load(name)
    cases = data["cases"]
    assert len(cases) == EXPECTED_CASES[name]
    ids = [case["id"] for case in cases]
    assert len(set(ids)) == len(ids)
    tables = data.get("tables") or {}
    for case in cases:
        assert case.get("source") or case.get("table") in tables, f"{case['id']} names no source"
        assert isinstance(case["measured"], (int, float)) and case["measured"] > 0


def test_readme_states_the_shipped_counts() -> None:
    readme = (VALIDATION / "README.md").read_text()
    for name, count in EXPECTED_CASES.items():
        assert f"`{name}` | {count:,} |" in readme
