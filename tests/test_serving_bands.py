"""Serving error bands: the residual classes validate writes, the bands serve reports from them, and
the shipped file they rest on."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from moesim.calibration.cv_modes import CV_MODES
from moesim.calibration.uncertainty import (BAND_COVERAGE, MIN_BAND_CASES, basis_of, load_residuals,
                                            new_model_residuals_path, serving_bands, serving_classes,
                                            serving_residuals_path, write_residuals)
from moesim.cli import main
from moesim.present.tables import LEFT_OUT, band_lines

ROOT = Path(__file__).resolve().parents[1]


def _case(backend, mode, metric, measured, predicted, predicted_cv=None):
    case = {"what": "serving_load", "metric": metric, "measured": measured, "predicted": predicted,
            "rel_error": predicted / measured - 1,
            "labels": {"backend": backend, "mode": mode, "system": "hgx-b200", "model": "deepseek-v3"}}
    if predicted_cv is not None:
        case.update(predicted_cv=predicted_cv, rel_error_cv=predicted_cv / measured - 1)
    return case


def _result(cases, cv=None):
    result = {"cases": cases}
    if cv:
        result.update(cv=cv, mape_cv={})
    return result


def test_classes_are_per_backend_mode_and_metric_with_empirical_quantiles():
    rng = np.random.default_rng(3)
    ratios = np.exp(rng.normal(0.1, 0.3, 200))          # measured / predicted
    cases = [_case("sglang", "agg", "ttft_ms", 100 * r, 100.0) for r in ratios]
    cases += [_case("sglang", "disagg", "ttft_ms", 50.0, 100.0)] * 3
    cases += [{"what": "gemm", "metric": "tflops", "measured": 1.0, "predicted": 2.0}]   # not a serving case
    out = serving_classes(_result(cases))
    assert set(out) == {"sglang.agg.ttft_ms", "sglang.disagg.ttft_ms"}
    row = out["sglang.agg.ttft_ms"]
    tail = (1 - BAND_COVERAGE) / 2
    assert row["cases"] == 200
    q = row["measured_over_predicted"]
    assert q["low"] == pytest.approx(np.quantile(ratios, tail))
    assert q["median"] == pytest.approx(np.median(ratios))
    assert q["high"] == pytest.approx(np.quantile(ratios, 1 - tail))
    assert row["mape"] == pytest.approx(np.mean(np.abs(1 / ratios - 1)))
    assert row["mean_rel_error"] == pytest.approx(np.mean(1 / ratios - 1))
    assert out["sglang.disagg.ttft_ms"]["mean_rel_error"] == pytest.approx(1.0)   # predicted twice the measured


def test_cross_validated_classes_use_the_left_out_predictions():
    cases = [_case("vllm", "agg", "tpot_ms", 10.0, 10.0, predicted_cv=20.0)] * 25
    assert serving_classes(_result(cases))["vllm.agg.tpot_ms"]["mean_rel_error"] == pytest.approx(0.0)
    row = serving_classes(_result(cases, cv="config"))["vllm.agg.tpot_ms"]
    assert row["mean_rel_error"] == pytest.approx(1.0) and row["measured_over_predicted"]["median"] == 0.5
    assert basis_of(_result(cases, cv="config")) == "leave-one-configuration-out predictions"
    assert basis_of(_result(cases, cv="source")) == "leave-one-source-out predictions"
    assert basis_of(_result(cases)) == "in-sample predictions"


def test_every_cv_mode_has_one_wording_everywhere():
    """The CLI's choice, validate's check, the band basis and the table's left-out note read one list of modes."""
    assert set(LEFT_OUT) == set(CV_MODES)
    assert [basis_of({"mape_cv": {}, "cv": m}) for m in CV_MODES] == [
        "leave-one-source-out predictions", "leave-one-configuration-out predictions",
        "leave-one-model-out predictions", "leave-one-system-out predictions"]
    assert basis_of({"mape_cv": {}, "cv": "elsewhere"}) == "cross-validated predictions"
    help_text = CliRunner().invoke(main, ["validate", "--help"]).output
    assert "[" + "|".join(CV_MODES) + "]" in help_text


def _residuals_with(key, n, low=0.5, median=1.0, high=3.0):
    return {"provenance": {"basis": "leave-one-configuration-out predictions"},
            "serving_classes": {key: {"cases": n, "mape": 0.4, "mean_rel_error": 0.1,
                                      "measured_over_predicted": {"low": low, "median": median, "high": high}}}}


def test_band_is_the_run_mean_times_the_class_quantiles():
    metrics = {"ttft_ms": {"mean": 200.0, "p50": 180.0}, "tpot_ms": {"mean": 20.0}, "itl_ms": {"mean": 19.0}}
    out = serving_bands("trtllm", "disagg", metrics,
                        residuals=_residuals_with("trtllm.disagg.ttft_ms", MIN_BAND_CASES, 0.25, 0.9, 4.0))
    ttft = out["ttft_ms"]
    assert (ttft["low"], ttft["median"], ttft["high"]) == pytest.approx((50.0, 180.0, 800.0))
    assert ttft["cases"] == MIN_BAND_CASES and "trtllm disagg" in ttft["rests_on"]
    assert "leave-one-configuration-out" in ttft["rests_on"]
    assert out["tpot_ms"]["low"] is None and "0 validated trtllm disagg" in out["tpot_ms"]["rests_on"]
    assert "itl_ms" not in out   # only what the benchmarks measured


def test_too_few_benchmarks_or_no_file_give_no_band_and_say_why():
    few = serving_bands("vllm", "agg", {"ttft_ms": {"mean": 50.0}},
                        residuals=_residuals_with("vllm.agg.ttft_ms", MIN_BAND_CASES - 1))["ttft_ms"]
    assert few["low"] is None and few["cases"] == MIN_BAND_CASES - 1 and "too few" in few["rests_on"]
    none = serving_bands("vllm", "agg", {"ttft_ms": {"mean": 50.0}}, residuals={})["ttft_ms"]
    assert none["low"] is None and "--write-residuals" in none["rests_on"]


def test_a_model_the_benchmarks_lack_gets_the_leave_one_model_out_band():
    seen = dict(_residuals_with("vllm.agg.tpot_ms", MIN_BAND_CASES, 0.8, 1.0, 1.3),
                serving_labels={"model": ["deepseek-v3", "minimax-m2.5"], "system": ["hgx-b200"]})
    unseen = _residuals_with("vllm.agg.tpot_ms", MIN_BAND_CASES, 0.5, 0.9, 2.0)
    unseen["provenance"]["basis"] = "leave-one-model-out predictions"
    metrics = {"tpot_ms": {"mean": 10.0}}
    fitted = serving_bands("vllm", "agg", metrics, seen, model="minimax-m2.5", new_model_residuals=unseen)["tpot_ms"]
    assert (fitted["low"], fitted["high"]) == pytest.approx((8.0, 13.0)) and not fitted["new_model"]
    new = serving_bands("vllm", "agg", metrics, seen, model="kimi-k2", new_model_residuals=unseen)["tpot_ms"]
    assert (new["low"], new["median"], new["high"]) == pytest.approx((5.0, 9.0, 20.0)) and new["new_model"]
    assert "leave-one-model-out" in new["rests_on"] and "kimi-k2 is not among the validated models" in new["rests_on"]
    assert "each predicted from a fit without its model" in band_lines({"tpot_ms": new})[0]
    missing = serving_bands("vllm", "agg", metrics, seen, model="kimi-k2", new_model_residuals={})["tpot_ms"]
    assert missing["low"] is None and "--cv model" in missing["rests_on"]
    # residuals that do not say which models they cover treat every model as fitted
    old = serving_bands("vllm", "agg", metrics, _residuals_with("vllm.agg.tpot_ms", MIN_BAND_CASES), model="x",
                        new_model_residuals=unseen)["tpot_ms"]
    assert not old["new_model"] and old["high"] == pytest.approx(30.0)


def test_validate_writes_serving_classes(tmp_path):
    cases = [_case("sglang", "agg", "ttft_ms", 120.0, 100.0)] * 30
    cases_file = tmp_path / "cases.yaml"
    cases_file.write_text("cases: []\n")
    out = tmp_path / "residuals.yaml"
    write_residuals(str(out), _result(cases), cases_file=str(cases_file), profile=None)
    data = load_residuals(out)
    assert data["serving_classes"]["sglang.agg.ttft_ms"]["cases"] == 30
    assert data["provenance"]["basis"] == "in-sample predictions"
    assert data["residuals"]["serving_load"]["cases"] == 30
    assert data["serving_labels"] == {"model": ["deepseek-v3"], "system": ["hgx-b200"]}


def test_shipped_serving_residuals_are_of_the_shipped_cases_and_cover_every_backend():
    data = yaml.safe_load(serving_residuals_path().read_text())
    cases = ROOT / "validation" / "serving_load.yaml"
    assert data["provenance"]["cases_sha256"] == hashlib.sha256(cases.read_bytes()).hexdigest(), \
        "validation/serving_load.yaml changed: rewrite the residuals with the command in their provenance"
    assert data["provenance"]["basis"] == "leave-one-configuration-out predictions"
    for backend in ("vllm", "sglang", "trtllm"):
        for metric in ("ttft_ms", "tpot_ms"):
            row = data["serving_classes"][f"{backend}.agg.{metric}"]
            q = row["measured_over_predicted"]
            assert row["cases"] >= MIN_BAND_CASES and 0 < q["low"] < q["median"] < q["high"]


def test_shipped_new_model_residuals_leave_each_model_out_of_the_same_cases():
    config = yaml.safe_load(serving_residuals_path().read_text())
    data = yaml.safe_load(new_model_residuals_path().read_text())
    assert data["provenance"]["cases_sha256"] == config["provenance"]["cases_sha256"], \
        "rewrite the leave-one-model-out residuals with the command in their provenance"
    assert data["provenance"]["basis"] == "leave-one-model-out predictions"
    assert data["serving_labels"] == config["serving_labels"] and "deepseek-v3" in data["serving_labels"]["model"]
    for backend in ("vllm", "sglang", "trtllm"):
        for metric in ("ttft_ms", "tpot_ms"):
            row = data["serving_classes"][f"{backend}.agg.{metric}"]
            assert row["cases"] == config["serving_classes"][f"{backend}.agg.{metric}"]["cases"] >= MIN_BAND_CASES


def test_serve_of_a_model_the_benchmarks_lack_says_its_band_is_a_new_models():
    from moesim.calibration.uncertainty import shipped_serving_residuals
    assert "qwen3-30b-a3b" not in shipped_serving_residuals()["serving_labels"]["model"]
    result = CliRunner().invoke(main, ["serve", "--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2",
                                       "--concurrency", "8", "--isl", "256", "--osl", "32", "--requests", "24",
                                       "--json"])
    assert result.exit_code == 0, result.output
    import json
    bands = json.loads(result.output)["uncertainty"]
    assert bands["tpot_ms"]["new_model"] and "leave-one-model-out" in bands["tpot_ms"]["rests_on"]
    assert "qwen3-30b-a3b is not among the validated models" in bands["tpot_ms"]["rests_on"]


def test_serve_reports_the_band():
    result = CliRunner().invoke(main, ["serve", "--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2",
                                       "--concurrency", "8", "--isl", "256", "--osl", "32", "--requests", "24"])
    assert result.exit_code == 0, result.output
    assert "mean TTFT: 90% band" in result.output and "validated benchmarks of this backend and mode" in result.output


def test_serve_report_has_the_band_table(tmp_path):
    out = tmp_path / "serve.html"
    result = CliRunner().invoke(main, ["serve", "--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2",
                                       "--concurrency", "8", "--isl", "256", "--osl", "32", "--requests", "24",
                                       "--report", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "How far to trust the means" in html and "sglang agg benchmarks of validation/serving_load.yaml" in html
