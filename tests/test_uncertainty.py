"""Error bars and the calibrate -> profile -> simulate path, end to end on synthetic results."""
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from scipy.stats import t as student_t

from moesim.calibration.uncertainty import bands, residual_summary
from moesim.cli import main

SYNTHETIC = Path(__file__).resolve().parents[1] / "topologies" / "calibration" / "synthetic-results"


def _residuals(cases: list[tuple[str, float, float]]) -> dict:
    """The residuals block `moesim validate --write-residuals` writes, from (metric, measured, predicted)."""
    result = {"cases": [{"what": "serving", "metric": m, "measured": meas, "predicted": pred,
                         "rel_error": (pred - meas) / meas} for m, meas, pred in cases]}
    return {"residuals": residual_summary(result)}


# four serving cases, the model optimistic by 60-100 %: throughput over-predicted, TPOT under-predicted
OPTIMISTIC = _residuals([("tokens_per_s_per_gpu", 100.0, 160.0), ("tokens_per_s_per_gpu", 100.0, 200.0),
                         ("tpot_ms", 50.0, 28.0), ("tpot_ms", 40.0, 22.0)])


def test_band_is_bias_corrected_and_asymmetric():
    out = bands({"tokens_per_s_per_gpu": 1000.0, "tpot_ms": 10.0}, "serving", residuals=OPTIMISTIC)
    rate, time = out["tokens_per_s_per_gpu"], out["tpot_ms"]
    logs = np.log([100 / 160, 100 / 200, 28 / 50, 22 / 40])  # measured/predicted speed
    assert rate["centre"] == pytest.approx(1000 * math.exp(logs.mean()))
    assert time["centre"] == pytest.approx(10 * math.exp(-logs.mean()))
    assert rate["centre"] < 1000 and time["centre"] > 10  # an optimistic model is corrected downwards in speed
    assert rate["low"] < rate["centre"] < rate["high"]
    assert rate["high"] - rate["centre"] > rate["centre"] - rate["low"]  # log-symmetric: longer upper arm
    half = student_t.ppf(0.975, 3) * logs.std(ddof=1) * math.sqrt(1 + 1 / 4)
    assert rate["high"] == pytest.approx(1000 * math.exp(logs.mean() + half))
    assert rate["cases"] == 4 and rate["bias"] == pytest.approx(OPTIMISTIC["residuals"]["serving"]["mean_rel_error"])


def test_band_stays_in_the_physical_range():
    wild = _residuals([("tokens_per_s_per_gpu", 100.0, 20.0), ("tokens_per_s_per_gpu", 100.0, 900.0),
                       ("tpot_ms", 50.0, 5.0)])
    out = bands({"tokens_per_s_per_gpu": 1000.0, "step_time_s": 0.01, "mfu": 0.8, "tpot_ms": 10.0}, "serving",
                residuals={"residuals": {"serving": wild["residuals"]["serving"]}})
    for name, band in out.items():
        assert band["low"] > 0, name
    assert out["mfu"]["high"] <= 1.0 and out["mfu"]["centre"] <= 1.0 and "capped at 1" in out["mfu"]["rests_on"]


def test_calibration_residual_widens_the_band():
    plain = bands({"tpot_ms": 10.0}, "serving", residuals=OPTIMISTIC)["tpot_ms"]
    both = bands({"tpot_ms": 10.0}, "serving", residuals=OPTIMISTIC, calibration_rms=0.4)["tpot_ms"]
    assert both["centre"] == pytest.approx(plain["centre"])
    assert both["high"] > plain["high"] and both["low"] < plain["low"]
    assert "calibration" in both["rests_on"]


def test_too_few_cases_give_no_band_and_say_so():
    one = _residuals([("tokens_per_s_per_gpu", 100.0, 150.0)])
    band = bands({"tokens_per_s_per_gpu": 1000.0}, "serving", residuals=one)["tokens_per_s_per_gpu"]
    assert band["low"] is None and band["centre"] is None and band["cases"] == 1 and "too few" in band["rests_on"]
    assert bands({"mfu": 0.4}, "training", residuals=OPTIMISTIC)["mfu"]["low"] is None


def test_shipped_residuals_give_the_default_scenario_a_band_below_its_optimistic_value():
    result = CliRunner().invoke(main, ["simulate", "--json"])
    assert result.exit_code == 0, result.output
    import json
    data = json.loads(result.output)
    value, band = data["metrics"]["tokens_per_s_per_gpu"], data["uncertainty"]["tokens_per_s_per_gpu"]
    assert band["cases"] >= 2 and 0 < band["low"] < band["centre"] < band["high"]
    assert band["centre"] < value  # the shipped cases say moesim is optimistic


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
    system = tmp_path / "my-h100.yaml"
    text = (Path(__file__).resolve().parents[1] / "topologies" / "systems" / "dgx-h100.yaml").read_text()
    system.write_text(text.replace("id: dgx-h100", "id: dgx-h100\ncalibration: synthetic-dgx-h100"))
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.provenance import calibration_name
    from moesim.sim.simulate import simulate
    sc = load_scenario(None, {"system": str(system), "gpus": 16, "parallel.ep": 16, "workload.batch": 8})
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
