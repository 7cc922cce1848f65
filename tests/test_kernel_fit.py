"""The kernel-parameter fit, leave-one-source-out cross-validation and kernel profiles."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner

from moesim.calibration.kernel_fit import Target, bind, blocks, cross_validate, fit_all
from moesim.calibration.kernel_params import definitions, load_kernel_profile, resolve_kernel_profile
from moesim.cli import main
from moesim.core.errors import MoesimError

BOUNDS = {"a": (0.01, 100.0), "b": (0.01, 100.0), "c": (0.01, 100.0)}


def latency_bandwidth(size: float, group: str, a: float = 2.0, b: float = 5.0, noise: float = 1.0) -> Target:
    """time = a + size / b, the shape of every kernel model here."""
    return bind(Target(id=f"{group}-{size}", what="x", metric="time_us", measured=(a + size / b) * noise, group=group,
                       model=lambda v, s=size: v["a"] + s / v["b"]), {"a": 1.0, "b": 1.0, "c": 1.0})


def test_fit_recovers_known_parameters():
    targets = [latency_bandwidth(s, f"src{i % 3}") for i, s in enumerate([1, 4, 16, 64, 256, 1024])]
    fit = fit_all(targets, {"a": 1.0, "b": 1.0, "c": 1.0}, BOUNDS)
    assert fit.values["a"] == pytest.approx(2.0, rel=0.02) and fit.values["b"] == pytest.approx(5.0, rel=0.02)
    assert "c" not in fit.values  # read by no target: stays at its default
    assert fit.cases == {"a": 6, "b": 6} and fit.sources["a"] == ["src0", "src1", "src2"]
    assert fit.residual_rms["x"] < 0.01  # only the weak prior pulls


def test_serving_benchmarks_are_fitted_robustly_and_kernel_cases_by_least_squares():
    """Four cases at 1 and one 100x off: least squares in log lands at their geometric mean (~2.5),
    the soft-L1 loss of serving benchmarks (ROBUST_LOG_SCALE) stays near the four."""
    def cases(what):
        return [bind(Target(id=f"{what}-{i}", what=what, metric="tpot_ms", measured=m, group=f"g{i}",
                            model=lambda v: v["a"]), {"a": 1.0}) for i, m in enumerate([1.0, 1.0, 1.0, 1.0, 100.0])]
    plain = fit_all(cases("gemm"), {"a": 1.0}, BOUNDS, prior_weight=0.0).values["a"]
    robust = fit_all(cases("serving_load"), {"a": 1.0}, BOUNDS, prior_weight=0.0).values["a"]
    assert plain == pytest.approx(100 ** 0.2, rel=1e-3)
    assert 1.0 < robust < 1.2


def test_bind_records_only_the_parameters_read():
    t = latency_bandwidth(1.0, "s")
    assert t.params == ("a", "b")


def test_blocks_split_targets_without_shared_parameters():
    t1 = latency_bandwidth(1.0, "s")
    t2 = bind(Target(id="c", what="y", metric="m", measured=3.0, group="s", model=lambda v: v["c"]),
              {"a": 1.0, "b": 1.0, "c": 1.0})
    parts = blocks([t1, t2])
    assert [names for _, names in parts] == [["a", "b"], ["c"]]


def test_left_out_source_is_predicted_without_its_own_cases():
    """A source whose cases alone pin a parameter is predicted from the default in cross-validation,
    while the in-sample fit matches it: the gap is the overfitting the report shows."""
    shared = [latency_bandwidth(s, "big") for s in (1, 10, 100, 1000)]
    only = bind(Target(id="lonely", what="x", metric="m", measured=8.0, group="alone", model=lambda v: v["c"]),
                {"a": 1.0, "b": 1.0, "c": 1.0})
    targets = shared + [only]
    defaults = {"a": 1.0, "b": 1.0, "c": 1.0}
    fit = fit_all(targets, defaults, BOUNDS)
    values = dict(defaults, **fit.values)
    assert only.predict(values) == pytest.approx(8.0, rel=0.01)
    held = cross_validate(targets, values, defaults, BOUNDS)
    assert held["lonely"] == pytest.approx(1.0)  # nothing else constrains c: the sourced default
    # the shared source, left out, has nobody else either: predicted from defaults, worse than in-sample
    assert abs(held["big-1000"] / 1000 * 5 - 1) > 0.1


def test_cross_validation_generalises_when_sources_agree():
    targets = [latency_bandwidth(s, f"src{i % 4}", noise=1 + 0.02 * ((i % 3) - 1)) for i, s in
               enumerate([1, 3, 9, 27, 81, 243, 729, 2187])]
    defaults = {"a": 1.0, "b": 1.0, "c": 1.0}
    fit = fit_all(targets, defaults, BOUNDS)
    held = cross_validate(targets, dict(defaults, **fit.values), defaults, BOUNDS)
    errors = [abs(held[t.id] / t.measured - 1) for t in targets]
    assert max(errors) < 0.1


def test_every_parameter_has_unit_meaning_source_and_family():
    defs = definitions()
    assert defs, "topologies/kernels/*.yaml define no parameter"
    for name, d in defs.items():
        assert d.unit and d.meaning and d.source, name
        assert d.bounds[0] <= d.value <= d.bounds[1], name


def test_spec_profile_is_the_defaults():
    spec = resolve_kernel_profile("spec")
    assert spec.name == "spec" and spec.values() == {n: d.value for n, d in definitions().items()}


def small_cases(tmp_path):
    cases = {"cases": [
        {"id": f"ep{g}-{sms}", "what": "ep_dispatch", "system": "gb200-nvl72", "gpus": g, "metric": "bottleneck_GBps",
         "measured": m, "source": f"table-{g}", "params": {"tokens_per_gpu": 512, "hidden": 2048, "topk": 4,
                                                           "experts": 4 * g, "dtype": "bf16", "mode": "normal",
                                                           "sms": sms, "timing": "kernel_only"}}
        for g, sms, m in [(8, 8, 200.0), (8, 16, 330.0), (16, 8, 190.0), (16, 16, 310.0)]]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    return path


def test_calibrate_cases_writes_a_profile_that_validate_reads(tmp_path):
    cases = small_cases(tmp_path)
    out = tmp_path / "kernels.yaml"
    run = CliRunner().invoke(main, ["calibrate", "--cases", str(cases), "-o", str(out)])
    assert run.exit_code == 0, run.output
    data = yaml.safe_load(out.read_text())
    fitted = {k: v for k, v in data["parameters"].items() if v["fitted"]}
    assert "ep.sm_rate_GBps.blackwell.nvlink" in fitted
    p = fitted["ep.sm_rate_GBps.blackwell.nvlink"]
    assert p["unit"] == "GB/s per SM" and p["cases"] == 4 and p["sources"] == ["table-16", "table-8"]
    unfitted = data["parameters"]["ep.ll_fixed_us.hopper"]
    assert not unfitted["fitted"] and "sourced default kept" in unfitted["note"]
    profile = load_kernel_profile(out)
    assert profile.values()["ep.sm_rate_GBps.blackwell.nvlink"] == pytest.approx(p["value"])
    # validate with that profile: better than from the sourced defaults
    spec = json.loads(CliRunner().invoke(main, ["validate", "--cases", str(cases), "--profile", "spec",
                                                "--json"]).output)
    fitted_run = json.loads(CliRunner().invoke(main, ["validate", "--cases", str(cases), "--profile", str(out),
                                                      "--json"]).output)
    assert fitted_run["mape"]["overall"] < spec["mape"]["overall"]
    assert fitted_run["provenance"]["kernel_profile"] == str(out)


def test_validate_cv_reports_left_out_and_in_sample(tmp_path):
    run = CliRunner().invoke(main, ["validate", "--cases", str(small_cases(tmp_path)), "--cv", "source", "--json"])
    data = json.loads(run.output)
    assert set(data["mape_cv"]) == set(data["mape"]) == set(data["bias"]) == set(data["bias_cv"])
    for case in data["cases"]:
        assert math.isclose(case["rel_error_cv"], (case["predicted_cv"] - case["measured"]) / case["measured"])
    table = CliRunner().invoke(main, ["validate", "--cases", str(small_cases(tmp_path)), "--cv", "source"])
    assert "MAPE left-out" in table.output and "bias in-sample" in table.output


@pytest.mark.parametrize("text,field", [
    ("format: moesim-kernel-profile/v1\nprovenance: {}\nresidual_rms: {}\nparameters:\n  ep.nope: "
     "{value: 1, unit: us, fitted: true, default: 1}\n", "parameters.ep.nope"),
    ("format: moesim-kernel-profile/v1\nprovenance: {}\nresidual_rms: {}\nparameters:\n  ep.fixed_us.hybrid-ep: "
     "{value: -1, unit: us, fitted: true, default: 1}\n", "parameters.ep.fixed_us.hybrid-ep.value"),
    ("format: moesim-kernel-profile/v1\nprovenance: {}\nresidual_rms: {}\nparameters:\n  ep.fixed_us.hybrid-ep: "
     "{unit: us, fitted: true, default: 1}\n", "value")])
def test_a_bad_profile_is_one_error_line(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MoesimError) as err:
        load_kernel_profile(path)
    assert field in err.value.one_line()


def test_a_bad_cases_file_leaves_no_profile(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - id: x\n    what: gemm\n")
    out = tmp_path / "k.yaml"
    run = CliRunner().invoke(main, ["calibrate", "--cases", str(bad), "-o", str(out)])
    assert run.exit_code == 2 and not out.exists()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "cases.0" in lines[0]


def _fit_of(values):
    from moesim.calibration.kernel_fit import Fit
    return Fit(values=dict(values), stderr={}, cases={}, sources={}, residual_rms={})


def _overshooting_fit(slope, fixed=(2.0, 50.0)):
    """A fit whose value moves by `slope` against the value it was simulated at (in log space), around `fixed`."""
    names = ("scale", "handoff_ms")

    def fit_at(at):
        return _fit_of({n: f * math.exp(slope * math.log(at.get(n, 1.0) / f)) for n, f in zip(names, fixed)})
    return fit_at


def test_fixed_point_converges_where_stepping_all_the_way_cycles():
    from moesim.validation.calibrate_cases import FIXED_POINT_TOLERANCE, fixed_point
    fit_at = _overshooting_fit(-3.0)
    start = {"scale": 1.0, "handoff_ms": 158.0}
    # stepping all the way: each pass lands 3x as far out on the other side
    at = dict(start)
    moves = []
    for _ in range(4):
        fitted = fit_at(at).values
        moves.append(abs(math.log(fitted["handoff_ms"] / at["handoff_ms"])))
        at = fitted
    assert moves[-1] > moves[0] > FIXED_POINT_TOLERANCE
    fit, passes, (move, name) = fixed_point(fit_at, start)
    assert move <= FIXED_POINT_TOLERANCE and passes <= 8
    assert fit.values["scale"] == pytest.approx(2.0, rel=0.02)
    assert fit.values["handoff_ms"] == pytest.approx(50.0, rel=0.02)


def test_fixed_point_stops_after_two_passes_when_the_fit_does_not_depend_on_where_it_ran():
    from moesim.validation.calibrate_cases import fixed_point
    fit, passes, (move, _) = fixed_point(_overshooting_fit(0.0), {"scale": 1.0, "handoff_ms": 158.0})
    assert passes == 2 and move == 0.0 and fit.values == {"scale": 2.0, "handoff_ms": 50.0}


def test_fixed_point_says_when_it_ran_out_of_passes():
    from moesim.validation.calibrate_cases import FIXED_POINT_TOLERANCE, fixed_point
    fit, passes, (move, name) = fixed_point(_overshooting_fit(-3.0), {"scale": 1.0, "handoff_ms": 158.0},
                                            max_passes=2)
    assert passes == 2 and move > FIXED_POINT_TOLERANCE and name in ("scale", "handoff_ms")


def test_next_values_damps_an_overshooting_parameter_by_its_secant():
    from moesim.validation.calibrate_cases import next_values

    # the fit moved 3x against the value (slope -3): a quarter of the way
    # (fit 0.3 at 0, 0 at 0.1, in log(h / 100 ms)), which lands on that line's fixed point, 0.075
    step = next_values({"h": 100.0}, {"h": 100.0 * math.exp(0.3)}, {"h": 100.0 * math.exp(0.1)}, {"h": 100.0})
    assert math.log(step["h"] / 100.0) == pytest.approx(0.075)
    # a fit that moved with the value: all the way
    step = next_values({"h": 100.0}, {"h": 120.0}, {"h": 110.0}, {"h": 125.0})
    assert step["h"] == pytest.approx(125.0)
