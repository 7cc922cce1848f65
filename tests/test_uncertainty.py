"""Error bars and the calibrate -> profile -> simulate path, end to end on synthetic results."""
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moesim.calibration.uncertainty import K, bands
from moesim.cli import main

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


def test_a_system_file_can_name_its_calibration(tmp_path):
    import shutil
    system = tmp_path / "my-h100.yaml"
    text = (Path(__file__).resolve().parents[1] / "topologies" / "systems" / "dgx-h100.yaml").read_text()
    system.write_text(text.replace("id: dgx-h100", "id: dgx-h100\ncalibration: synthetic-dgx-h100"))
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.provenance import calibration_name
    from moesim.sim.simulate import simulate
    sc = load_scenario(None, {"system": str(system), "gpus": 8, "parallel.ep": 8, "workload.batch": 8})
    assert calibration_name(sc) == "synthetic-dgx-h100"
    result = simulate(sc)
    assert "calibration fit RMS" in result["uncertainty"]["tokens_per_s_per_gpu"]["rests_on"]


def test_user_system_file_with_its_own_id_simulates(tmp_path):
    system = tmp_path / "lab-cluster.yaml"
    text = (Path(__file__).resolve().parents[1] / "topologies" / "systems" / "dgx-h100.yaml").read_text()
    system.write_text(text.replace("id: dgx-h100", "id: lab-cluster"))
    missing = CliRunner().invoke(main, ["simulate", "--system", str(system), "--gpus", "16", "--ep", "16"])
    assert missing.exit_code == 2 and "hardware_profile" in missing.stderr
    system = tmp_path / "lab-cluster-2.yaml"
    system.write_text(text.replace("id: dgx-h100", "id: lab-cluster\nhardware_profile: dgx-h100"))
    result = CliRunner().invoke(main, ["simulate", "--system", str(system), "--gpus", "16", "--ep", "16",
                                       "--batch", "8", "--json"])
    assert result.exit_code == 0, result.output
    route = CliRunner().invoke(main, ["comm", "--ep", "--system", str(system), "--gpus", "16", "--json"])
    assert route.exit_code == 0, route.output
