"""The GEMM kernel model (costs/gemm_kernels.py, validation/gemm_model.py) behaves physically."""
from __future__ import annotations

import pytest

from moesim.calibration.kernel_fit import bind
from moesim.calibration.kernel_params import definitions
from moesim.costs import gemm_kernels as gk
from moesim.validation.cases import Case, Skip, load_cases
from moesim.validation.gemm_model import library_of, prepare, shape_of

DEFAULTS = {n: d.value for n, d in definitions().items()}
NAMES = {"eff": "gemm.eff.fp8.hopper", "fixed": "gemm.fixed_us.cublas", "tile_us": "gemm.tile_us.cublas"}
TILES = [(64, 64), (128, 128), (128, 256), (256, 128)]


def _shape(m, n, k, sms=132, rows=None, kernels=1):
    # the dense peak is SMs x the per-SM rate (1979 TFLOP/s FP8 on 132 Hopper SMs)
    return gk.kernel_shape(rows or [m], n, k, tiles=TILES, sms=sms, peak_flops=1979e12 * sms / 132, a_bytes=1.0,
                           c_bytes=2.0,
                           hbm_Bps=2.9e12, kernels=kernels)


def _case(**over):
    base = dict(id="t", what="gemm", system="dgx-h100", metric="tflops", measured=100.0,
                params={"m": 4096, "n": 4096, "k": 4096, "dtype": "fp8"},
                source="Azure/AI-benchmarking-guide, cuBLASLt GEMM")
    base.update(over)
    return Case(**base)


def test_more_sms_never_slower_and_faster_when_compute_bound():
    values = dict(DEFAULTS)
    small, big = _shape(8192, 8192, 8192, sms=66), _shape(8192, 8192, 8192, sms=132)
    t_small, t_big = gk.kernel_time(small, values, **NAMES), gk.kernel_time(big, values, **NAMES)
    assert t_big < t_small
    # per-SM rate fixed: twice the SMs, about half the time for a large compute-bound GEMM
    assert t_small / t_big == pytest.approx(2.0, rel=0.1)


def test_fixed_cost_dominates_tiny_gemms():
    values = dict(DEFAULTS)
    t = gk.kernel_time(_shape(16, 16, 128), values, **NAMES)
    assert t == pytest.approx(values["gemm.fixed_us.cublas"] * 1e-6, rel=0.5)
    values["gemm.fixed_us.cublas"] *= 2
    assert gk.kernel_time(_shape(16, 16, 128), values, **NAMES) > 1.5 * t


def test_small_m_is_weight_read_bound():
    values = dict(DEFAULTS)
    shape = _shape(64, 7168, 16384)
    weight_s = 7168 * 16384 / 2.9e12
    assert gk.kernel_time(shape, values, **NAMES) >= weight_s
    values["gemm.eff.fp8.hopper"] *= 1.5  # faster tensor cores do not help a bandwidth-bound GEMM
    assert gk.kernel_time(shape, values, **NAMES) >= weight_s


def test_efficiency_sets_the_large_gemm_rate():
    values = dict(DEFAULTS)
    shape = _shape(16384, 16384, 16384)
    base = gk.kernel_tflops(shape, values, **NAMES)
    values["gemm.eff.fp8.hopper"] *= 0.8
    assert gk.kernel_tflops(shape, values, **NAMES) == pytest.approx(0.8 * base, rel=0.03)


def test_wave_quantisation_one_extra_tile_costs_a_wave():
    # 132 SMs: 132 tiles of 128x256 fill one wave; one more row of tiles needs a second wave
    assert gk.waves_of(132, 132) == 1 and gk.waves_of(133, 132) == 2
    one = gk.kernel_shape([128 * 12], 256 * 11, 8192, tiles=[(128, 256)], sms=132, peak_flops=1979e12,
                          a_bytes=1, c_bytes=2, hbm_Bps=2.9e12)
    two = gk.kernel_shape([128 * 12 + 1], 256 * 11, 8192, tiles=[(128, 256)], sms=132, peak_flops=1979e12,
                          a_bytes=1, c_bytes=2, hbm_Bps=2.9e12)
    values = dict(DEFAULTS, **{"gemm.tile_us.cublas": 0.7})
    assert gk.kernel_time(two, values, **NAMES) > 1.05 * gk.kernel_time(one, values, **NAMES)


def test_per_group_costs():
    values = dict(DEFAULTS)
    names = dict(NAMES, group_us="gemm.group_us.deepgemm")
    one = _shape(1024, 4096, 7168, rows=[1024])
    four = _shape(256, 4096, 7168, rows=[256] * 4)
    g = values["gemm.group_us.deepgemm"] * 1e-6
    per_sm = four.peak_flops * values[NAMES["eff"]] / four.sms
    _, waves = min((w * (f / per_sm + values[NAMES["tile_us"]] * 1e-6), w) for w, f in zip(four.waves, four.tile_flops))
    extra = gk.kernel_time(four, values, **names) - gk.kernel_time(four, values, **NAMES)
    assert extra == pytest.approx(min(4, waves) * g)  # one switch per tile an SM takes, at most per group
    big = _shape(4096, 4096, 7168, rows=[4096] * 4)
    assert gk.kernel_time(big, values, **names) - gk.kernel_time(big, values, **NAMES) == pytest.approx(4 * g)
    assert gk.kernel_time(one, values, **names) < gk.kernel_time(four, values, **names)
    # a library that runs one kernel per group pays the fixed cost per group
    per_group = _shape(7168, 4096, 4096, kernels=4)
    single = _shape(7168, 4096, 4096)
    assert gk.kernel_time(per_group, values, **NAMES) == pytest.approx(4 * gk.kernel_time(single, values, **NAMES))


def test_deepgemm_tile_choice_matches_its_published_choices():
    # DeepGEMM PR #81 (H800, 132 SMs): 4096x7168 picks the 256x128 block; PR #95: wgrad 7168x4096 picks 128x152
    v0425 = dict(block_m=[64, 128, 256], block_n=list(range(16, 129, 8)) + [144, 160])
    assert gk.deepgemm_tile([4096], 7168, 132, **v0425) == (256, 128)
    wgrad = [bn for bn in list(range(16, 129, 8)) + [136, 152] if bn % 16 == 8]
    assert gk.deepgemm_tile([7168], 4096, 132, [64, 128], wgrad) == (128, 152)
    # the initial release had 128x128 at most
    assert gk.deepgemm_tile([4096], 7168, 132, [64, 128], list(range(16, 129, 8)), small_m_only=True) == (128, 128)


def test_library_rules():
    assert library_of(_case())[0] == "cublaslt"
    dg = _case(source="deepseek-ai/DeepGEMM README.md @ a6d97a1c1b48 (## Performance)")
    assert library_of(dg)[1]["block_n"][-1] == 128
    assert library_of(_case(params={"m": 1, "n": 1, "k": 1, "dtype": "bf16", "library": "torch"}))[0] == "torch"
    with pytest.raises(Skip, match="which GEMM library"):
        library_of(_case(source="a blog post"))


def test_skip_reasons():
    with pytest.raises(Skip, match="missing params: k"):
        shape_of(_case(params={"m": 1, "n": 1, "dtype": "fp8"}))
    with pytest.raises(Skip, match="groups"):
        shape_of(_case(what="grouped_gemm"))
    with pytest.raises(Skip, match="metric"):
        shape_of(_case(metric="time_us"))
    with pytest.raises(Skip, match="tensor cores|fp4"):
        shape_of(_case(params={"m": 64, "n": 64, "k": 64, "dtype": "fp4"}))


def test_every_case_builds_and_reads_only_defined_parameters():
    cases = [c for c in load_cases("validation/cases.yaml") if c.what in ("gemm", "grouped_gemm")]
    assert len(cases) >= 50
    for case in cases:
        target = bind(prepare(case), DEFAULTS)
        assert target.params and all(p.startswith("gemm.") for p in target.params)
        assert target.predict(DEFAULTS) > 0


def test_kgrouped_wgrad_runs_one_kernel_per_group_with_fp32_accumulate():
    case = next(c for c in load_cases("validation/cases.yaml") if c.params.get("layout") == "k_grouped_contiguous")
    shape, names = shape_of(case)
    assert shape.kernels == case.params["groups"] and names["eff"] == "gemm.eff.fp8_wgrad.hopper"
    m, n, k = case.params["m"], case.params["n"], case.params["k"]
    assert shape.bytes == pytest.approx(m * k + n * k + 2 * 4 * m * n)
