"""The floor the measured serving benchmarks' own repeats put under any model's error."""
import numpy as np
import pytest

from moesim.present.tables import repeatability_table
from moesim.validation.cases import Case, load_cases
from moesim.validation.repeatability import best_single_value, floor, repeatability, repeated
from moesim.validation.run import validate
from tests.test_validation_serving_load import bench, write


def case(id, measured, *, metric="tpot_ms", what="serving_load", concurrency=4):
    return Case(id=id, what=what, system="dgx-h100", gpus=8, metric=metric, measured=measured, source="t",
                params={"model": "m", "concurrency": concurrency})


@pytest.mark.parametrize("values", [[1.0, 2.12], [1.0, 1.1, 3.0], [5.0, 5.2, 5.3, 9.0], [2.0, 4.0]])
def test_the_best_single_value_is_the_least_mape_constant(values):
    def mape(c):
        return np.mean([abs(c / v - 1) for v in values])
    grid = np.linspace(min(values), max(values), 20001)
    assert mape(best_single_value(values)) <= min(mape(c) for c in grid) + 1e-12
    assert best_single_value(values) in values


def test_repeats_are_distinct_values_of_one_stated_benchmark():
    cases = [case("a1", 10.0), case("a2", 10.004),   # one measurement copied: not a repeat
             case("b1", 10.0, concurrency=8), case("b2", 12.0, concurrency=8), case("b3", 12.0, concurrency=8),
             case("c1", 10.0, metric="ttft_ms"),
             case("k1", 1.0, what="gemm"), case("k2", 2.0, what="gemm")]   # kernels: per-source calibration
    assert repeated(cases) == {"serving_load.tpot_ms": [{10.0: "b1", 12.0: "b2"}]}


def test_the_floor_and_the_models_error_on_the_same_values():
    groups = [{10.0: "b1", 12.0: "b2"}, {1.0: "d1", 2.0: "d2", 4.0: "d3"}]
    out = floor(groups, {"b1": 0.1, "b2": -0.2, "d1": 0.5, "zz": 9.0})
    assert out["benchmarks"] == 2 and out["values"] == 5
    # best single values 10 and 1: errors 0, 1/6 and 0, 1/2, 3/4
    assert out["mape_floor"] == pytest.approx((0 + 1 / 6 + 0 + 0.5 + 0.75) / 5)
    assert out["median_max_over_min"] == pytest.approx(2.6) and out["max_max_over_min"] == pytest.approx(4.0)
    assert out["model_values"] == 3 and out["model_mape"] == pytest.approx((0.1 + 0.2 + 0.5) / 3)
    assert "model_mape" not in floor(groups)
    text = repeatability_table({"serving_load.tpot_ms": out})
    assert "serving_load.tpot_ms" in text and "28.3%" in text and "26.7%" in text


def test_the_shipped_file_repeats_some_benchmarks():
    rep = repeatability(load_cases("validation/serving_load.yaml"))
    assert set(rep) == {"serving_load.tpot_ms", "serving_load.ttft_ms"}
    for r in rep.values():
        assert r["benchmarks"] >= 50 and r["values"] > 2 * r["benchmarks"] - 1
        assert 0 < r["mape_floor"] < 0.1 and r["max_max_over_min"] > 2


def test_validate_reports_the_floor_beside_its_own_error(tmp_path):
    cases = load_cases(write(tmp_path, bench("a-c2", concurrency=2) + bench("a-c2-again", concurrency=2)))
    # the same benchmark measured again, 20 % slower
    cases = [c if not c.id.startswith("a-c2-again") else c.model_copy(update={"measured": c.measured * 1.2})
             for c in cases]
    result = validate(cases, kernel_profile="spec")
    rep = result["repeatability"]["serving_load.tpot_ms"]
    assert rep["benchmarks"] == 1 and rep["values"] == 2 and rep["model_values"] == 2
    assert rep["mape_floor"] == pytest.approx(0.2 / 1.2 / 2)
    errors = [abs(r["rel_error"]) for r in result["cases"] if r["metric"] == "tpot_ms"]
    assert rep["model_mape"] == pytest.approx(np.mean(errors))
    assert rep["model_mape"] >= rep["mape_floor"]
    assert "repeatability" not in validate(cases[:2], kernel_profile="spec")


def test_the_validate_report_shows_the_floor(tmp_path):
    from moesim.present.report import render_html, validate_section
    cases = load_cases(write(tmp_path, bench("a-c2", concurrency=2) + bench("a-c2-again", concurrency=2)))
    cases = [c if not c.id.startswith("a-c2-again") else c.model_copy(update={"measured": c.measured * 1.2})
             for c in cases]
    html = render_html([validate_section(validate(cases, kernel_profile="spec"), "cases.yaml")], title="t")
    assert "Repeated measurements" in html and "serving_load.tpot_ms" in html and "8.3 %" in html
