"""Load-aware planning (issue 16, "Planner and what-if"): a space with `load:` serves every point
(`moesim.serve.run.serve`), agg and disagg, ranks them by percentile SLOs and draws the
throughput-interactivity front."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moesim.cli import main
from moesim.core.errors import MoesimError
from moesim.planning import space as search_space
from moesim.planning.planner import plan

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "workloads" / "spaces" / "example-serve-load.yaml"

# two deployments of the small model, agg and disagg 1:1, a short load: seconds
SMALL = {"name": "small-load", "models": ["qwen3-30b-a3b"], "systems": [{"name": "dgx-h100", "gpus": [4]}],
         "parallel": [{"tp": 1, "ep": "gpus"}, {"tp": 1, "ep": 2}],
         "load": {"concurrency": 16, "isl": 512, "osl": 64, "requests": 64},
         "mode": ["agg", "disagg"], "prefill_workers": [1], "decode_workers": [1]}


def _write(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    """The small space under a TPOT p90 bound between its best and worst points."""
    folder = tmp_path_factory.mktemp("plan-serve")
    loose = plan(search_space.load_space(_write(folder, SMALL, "loose.yaml")))
    tpots = sorted(p["tpot_p90_ms"] for p in loose["points"])
    bound = (tpots[0] + tpots[-1]) / 2
    strict = plan(search_space.load_space(_write(folder, dict(SMALL, slo={"tpot_p90_ms": bound}), "strict.yaml")))
    return loose, strict, bound


def test_load_space_serves_every_point_agg_and_disagg(small_plan):
    loose, _, _ = small_plan
    points = loose["points"]
    assert len(points) == 4 and loose["pruned"] == 0
    assert {p["mode"] for p in points} == {"agg", "disagg"}
    for p in points:
        assert p["phase"] == "serve" and p["latency_metric"] == "tpot_p90_ms"
        assert p["ttft_p90_ms"] > 0 and p["tpot_p90_ms"] > 0
        assert p["tokens_per_s_per_gpu"] > 0 and p["tokens_per_s_per_user"] > 0
        assert p["cost_per_million_tokens"] is not None and p["meets_slo"] is True
    disagg = next(p for p in points if p["mode"] == "disagg" and p["parallel"]["ep"] == 4)
    assert disagg["gpus"] == 8 and "disagg 1P:1D" in disagg["label"]   # both pools of one EP group of 4
    assert set(loose["pareto"]["throughput_vs_interactivity"]) <= {p["id"] for p in points}
    assert list(loose["fronts_by_system"]) == ["dgx-h100"]


def test_slo_marks_violations_and_ranks_feasible(small_plan):
    _, strict, bound = small_plan
    bad = [p for p in strict["points"] if not p["meets_slo"]]
    good = [p for p in strict["points"] if p["meets_slo"]]
    assert bad and good
    for p in bad:
        assert p["tpot_p90_ms"] > bound and p["violations"]["tpot_p90_ms"] > 0 and p["id"] not in strict["feasible"]
    assert strict["best"]["id"] in strict["feasible"]
    assert strict["best"]["tokens_per_s_per_gpu"] == max(p["tokens_per_s_per_gpu"] for p in good)


def test_best_point_carries_and_prints_the_error_band_of_its_backend_and_mode(small_plan):
    """The answer of a load plan says how far to trust it: the winner's mean TTFT / TPOT band from the validated
    serving benchmarks of its backend and mode, the one `moesim serve` prints for the same deployment."""
    from moesim.calibration.uncertainty import serving_bands
    from moesim.present.tables import plan_table
    loose, _, _ = small_plan
    best = loose["best"]
    bands = best["uncertainty"]
    assert set(bands) == {"ttft_ms", "tpot_ms"}
    metrics = {"ttft_ms": {"mean": best["ttft_ms"]}, "tpot_ms": {"mean": best["tpot_ms"]}}
    assert bands == serving_bands("sglang", best["mode"], metrics, model="qwen3-30b-a3b")
    lines = plan_table(loose).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("best (")))
    assert lines[at + 1].startswith("  mean TTFT: 90% band") and lines[at + 2].startswith("  mean TPOT: 90% band")
    assert "as yours is not among them" in lines[at + 2]   # qwen3-30b-a3b: the leave-one-model-out residuals
    from moesim.present.report import plan_section
    said = plan_section(loose, "plan.json").assumptions
    assert [a for a in said if a.startswith("Best configuration's mean TTFT: 90% band")]


def test_cli_front_figure_is_png_and_cache_resumes(tmp_path):
    path = _write(tmp_path, dict(SMALL, parallel=[{"tp": 1, "ep": "gpus"}]))
    front, cache = tmp_path / "front.png", tmp_path / "cache"
    out = CliRunner().invoke(main, ["plan", str(path), "--front", str(front), "--cache", str(cache), "--json"])
    assert out.exit_code == 0, out.output
    assert front.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.stdout)["simulated"] == 2
    again = CliRunner().invoke(main, ["plan", str(path), "--cache", str(cache), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["from_cache"] == 2


@pytest.mark.parametrize("change, field", [
    ({"load": {"concurrency": 0, "isl": 512, "osl": 64, "requests": 64}}, "load.concurrency"),
    ({"load": {"concurrency": 8, "isl": "zipf:3", "osl": 64, "requests": 64}}, "load.isl"),
    ({"load": {"concurrency": 8, "isl": 512, "osl": 64, "requests": 64, "think": 1}}, "think"),
    ({"load": {"concurrency": 8, "rate": 2.0, "isl": 512, "osl": 64, "requests": 64}}, "load.concurrency/load.rate"),
    ({"prefill_workers": [0]}, "prefill_workers"),
    ({"batch": [8]}, "batch"),
])
def test_bad_load_field_is_one_error_line(tmp_path, change, field):
    path = _write(tmp_path, dict(SMALL, **change))
    out = CliRunner().invoke(main, ["plan", str(path)])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], out.output


def test_percentile_slo_needs_a_load(tmp_path):
    data = yaml.safe_load((ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml").read_text())
    data["slo"] = {"tpot_p90_ms": 50}
    with pytest.raises(MoesimError) as err:
        search_space.load_space(_write(tmp_path, data))
    assert err.value.field == "slo.tpot_p90_ms"


def test_example_space_expands():
    points = search_space.expand(search_space.load_space(EXAMPLE))
    modes = [p["serve"]["mode"] for p in points]
    assert modes.count("agg") == 6 and modes.count("disagg") == 5   # ep2 disagg on 4 and 8 GPUs kept once
    assert all(p["serve"]["load"]["concurrency"] == 32 for p in points)


def test_plan_benchmark_fills_points_per_min(tmp_path):
    from moesim.bench.serve import plan_benchmark
    out = plan_benchmark(_write(tmp_path, dict(SMALL, parallel=[{"tp": 1, "ep": "gpus"}])), workers=1)
    assert out["plan_points"] == 2 and out["plan_points_per_min"] > 0
    assert out["plan_meets_target"] is False and out["plan_target"] == {"points_per_min": 1000.0, "points": 500}
