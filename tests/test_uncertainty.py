"""Error bars and the calibrate -> profile -> simulate path, end to end on synthetic results."""
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moesim.cli import main
from moesim.uncertainty import K, bands

SYNTHETIC = Path(__file__).resolve().parents[1] / "topologies" / "calibration" / "synthetic-results"


def test_band_is_k_times_rms_and_combines_calibration():
    residuals = {"residuals": {"serving": {"cases": 4, "rms_rel_error": 0.3, "mean_rel_error": 0.1, "mape": 0.2}}}
    out = bands({"tokens_per_s_per_gpu": 1000.0, "tpot_ms": 10.0}, "serving", residuals=residuals)
    assert out["tokens_per_s_per_gpu"]["low"] == pytest.approx(1000 * (1 - K * 0.3))
    assert out["tokens_per_s_per_gpu"]["high"] == pytest.approx(1000 * (1 + K * 0.3))
    both = bands({"tpot_ms": 10.0}, "serving", residuals=residuals, calibration_rms=0.4)
    assert both["tpot_ms"]["rms"] == pytest.approx(0.5)
    assert "calibration" in both["tpot_ms"]["rests_on"]
    assert bands({"mfu": 0.4}, "training", residuals=residuals)["mfu"]["low"] is None


def test_calibrate_then_simulate_with_the_profile(tmp_path):
    runner = CliRunner()
    profile = tmp_path / "profile.yaml"
    files = [str(SYNTHETIC / f) for f in ("gemm.json", "memcpy.json", "collective.json")]
    result = runner.invoke(main, ["calibrate", *files, "-o", str(profile)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(profile.read_text())
    assert data["gpu"] == "h100-sxm" and "provenance" in data
    base = runner.invoke(main, ["simulate", "--batch", "8", "--json"])
    calibrated = runner.invoke(main, ["simulate", "--batch", "8", "--json", "--profile", str(profile)])
    assert base.exit_code == 0 and calibrated.exit_code == 0, calibrated.output
    import json
    a, b = json.loads(base.output), json.loads(calibrated.output)
    assert a["metrics"]["step_time_s"] != b["metrics"]["step_time_s"]
    assert "calibration fit RMS" in b["uncertainty"]["tokens_per_s_per_gpu"]["rests_on"]


def test_profile_for_another_gpu_is_refused(tmp_path):
    runner = CliRunner()
    profile = tmp_path / "profile.yaml"
    files = [str(SYNTHETIC / f) for f in ("gemm.json", "memcpy.json")]
    assert runner.invoke(main, ["calibrate", *files, "-o", str(profile)]).exit_code == 0
    result = runner.invoke(main, ["simulate", "--system", "gb200-nvl72", "--gpus", "72", "--ep", "72",
                                  "--redundant-experts", "32", "--profile", str(profile)])
    assert result.exit_code == 2 and "runtime.profile" in result.stderr


def test_validate_writes_residuals(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump({"cases": [
        {"id": "ar", "what": "collective", "system": "dgx-h100", "gpus": 8, "metric": "busbw_GBps",
         "measured": 368.0, "params": {"op": "all_reduce", "bytes": 8589934592}, "source": "test"}]}))
    out = tmp_path / "residuals.yaml"
    result = CliRunner().invoke(main, ["validate", "--cases", str(cases), "--write-residuals", str(out)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())
    assert data["residuals"]["collective"]["cases"] == 1 and data["provenance"]["cases_sha256"]
