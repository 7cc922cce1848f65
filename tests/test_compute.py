"""Compute model: roofline x efficiency GEMM times, their limits and shape behaviour, the data
files and their sources, bad input, and the gemm / grouped_gemm validation predictors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pydantic import BaseModel

from moesim.core.errors import MoesimError
from moesim.costs.compute import (ComputeProfile, achieved_tflops, compute_dir, gemm_estimate, gemm_tflops, gemm_time,
                                  grouped_gemm_estimate, grouped_gemm_time, hbm_effective_Bps, load_compute_profile,
                                  memory_bound_time, memory_efficiency, profile_names, tensor_peak_flops)
from moesim.specs import precision
from moesim.specs.hardware import Sourced, gpu_names, load_gpu

PROFILE_FILES = sorted(compute_dir().glob("*.yaml"))


def gpu_and_profile(gpu_id: str):
    return load_gpu(gpu_id), load_compute_profile(gpu_id)


def sourced_fields(model: BaseModel, prefix: str = ""):
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, Sourced):
            yield path, value
        elif isinstance(value, BaseModel):
            yield from sourced_fields(value, f"{path}.")


# ---------------------------------------------------------------- data files

def test_every_gpu_has_a_profile():
    assert set(gpu_names()) <= set(profile_names())
    assert {"h100-sxm", "h800-sxm", "h200-sxm", "b200-sxm", "gb200"} <= set(profile_names())


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_loads_and_every_value_has_a_source(path):
    profile = load_compute_profile(path.stem)
    assert profile.gpu == path.stem
    gpu = load_gpu(profile.gpu)
    fields = dict(sourced_fields(profile))
    assert {"matmul_peak_efficiency.bf16", "matmul_peak_efficiency.fp8", "matmul_peak_efficiency.fp4",
            "gemm_tiles", "kernel_launch_s"} <= set(fields)
    for name, item in fields.items():
        assert item.source.strip(), f"{path.name}: {name} has no source"
    # every non-Sourced field is the GPU id: no bare numbers
    for name in type(profile).model_fields:
        value = getattr(profile, name)
        assert name == "gpu" or value is None or isinstance(value, (Sourced, BaseModel)), name
    for family in ("bf16", "fp8", "fp4"):
        eff = getattr(profile.matmul_peak_efficiency, family).value
        assert (eff is None) == (gpu.peak_flops(family) is None), f"{family}: efficiency vs peak"
        assert eff is None or 0.5 < eff <= 1.0
    assert 0.5 < memory_efficiency(gpu, profile) <= 1.0
    assert 0 < profile.kernel_launch_s.value < 1e-4


def test_measured_hbm_takes_precedence():
    gpu, profile = gpu_and_profile("h100-sxm")
    assert memory_efficiency(gpu, profile) == pytest.approx(2.90 / 3.35)
    gpu, profile = gpu_and_profile("h800-sxm")
    assert gpu.hbm_measured_TBps.value is None
    assert memory_efficiency(gpu, profile) == profile.memory_efficiency.value


def test_bad_profile_files_fail_located(tmp_path):
    good = (compute_dir() / "h100-sxm.yaml").read_text()
    bad = tmp_path / "x.yaml"
    bad.write_text(good.replace("bf16: {value: 0.817", "bf16: {value: 1.2"))
    with pytest.raises(MoesimError, match="matmul_peak_efficiency.bf16") as exc:
        load_compute_profile(str(bad))
    assert "x.yaml" in str(exc.value)
    bad.write_text(good + "\nspeed_of_light: 3\n")
    with pytest.raises(MoesimError, match="unknown field"):
        load_compute_profile(str(bad))
    bad.write_text(good.replace("[[64, 64], [64, 128]", "[[64, 0], [64, 128]"))
    with pytest.raises(MoesimError, match="gemm_tiles"):
        load_compute_profile(str(bad))
    with pytest.raises(MoesimError, match="unknown compute profile"):
        load_compute_profile("h900-sxm")


def test_profile_of_another_gpu_is_rejected():
    gpu = load_gpu("h100-sxm")
    with pytest.raises(MoesimError, match="profile is for 'h200-sxm'"):
        gemm_time(gpu, load_compute_profile("h200-sxm"), 128, 128, 128, "bf16")


# ---------------------------------------------------------------- model behaviour

def test_large_square_bf16_gemm_reaches_matmul_peak_efficiency():
    gpu, profile = gpu_and_profile("h100-sxm")
    target = gpu.peak_flops("bf16") * profile.matmul_efficiency("bf16")
    size = 16384
    achieved = gemm_tflops(gpu, profile, size, size, size, "bf16") * 1e12
    assert 0.98 * target <= achieved <= target
    assert gemm_estimate(gpu, profile, size, size, size, "bf16").bound == "compute"


def test_tiny_gemm_is_memory_bound():
    gpu, profile = gpu_and_profile("h100-sxm")
    n = k = 8192
    est = gemm_estimate(gpu, profile, 1, n, k, "bf16")
    assert est.bound == "memory"
    weights = n * k * precision.bytes_per_element("bf16")
    expected = weights / hbm_effective_Bps(gpu, profile) + profile.kernel_launch_s.value
    assert est.time_s == pytest.approx(expected, rel=0.01)
    assert hbm_effective_Bps(gpu, profile) == pytest.approx(2.90e12)


@pytest.mark.parametrize("gpu_id", ["h100-sxm", "h800-sxm", "h200-sxm", "b200-sxm", "gb200"])
def test_efficiency_never_above_one(gpu_id):
    gpu, profile = gpu_and_profile(gpu_id)
    dtypes = [d for d in ("bf16", "fp8", "nvfp4") if gpu.peak_flops(precision.get(d).family)]
    for dtype in dtypes:
        ceiling = tensor_peak_flops(gpu, profile, dtype)
        for m in (1, 7, 64, 100, 128, 1000, 4096, 20000):
            for n, k in ((128, 128), (2112, 7168), (7168, 2048), (16384, 16384)):
                est = gemm_estimate(gpu, profile, m, n, k, dtype)
                assert 0 < est.shape_efficiency <= 1 + 1e-12
                assert est.tflops * 1e12 <= ceiling * (1 + 1e-9)
                assert est.time_s >= est.memory_s + est.launch_s
                assert est.time_s >= est.compute_s + est.launch_s


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_throughput_grows_with_size(dtype):
    gpu, profile = gpu_and_profile("h100-sxm")
    sizes = [2 ** i for i in range(6, 16)]
    tflops = [gemm_tflops(gpu, profile, s, s, s, dtype) for s in sizes]
    for small, large in zip(tflops, tflops[1:]):
        assert large >= 0.95 * small
    assert tflops[-1] > 20 * tflops[0]
    # skinny decode GEMMs: more tokens, more throughput, until compute-bound
    rows = [gemm_tflops(gpu, profile, m, 7168, 2048, dtype) for m in (1, 8, 64, 512, 4096)]
    assert rows == sorted(rows)


def test_fp8_faster_than_bf16_for_large_gemms():
    gpu, profile = gpu_and_profile("h100-sxm")
    for size in (4096, 8192, 16384):
        assert gemm_time(gpu, profile, size, size, size, "fp8") < 0.75 * gemm_time(gpu, profile, size, size, size, "bf16")


def test_wave_quantisation_and_tile_padding():
    gpu, profile = gpu_and_profile("h100-sxm")
    sms = gpu.sm_count.value
    # one tile row per SM fills exactly one wave; one more tile needs a second wave
    tm, tn = min(map(tuple, profile.gemm_tiles.value))
    full = gemm_estimate(gpu, profile, tm, tn * sms, 65536, "bf16")
    over = gemm_estimate(gpu, profile, tm, tn * sms + 1, 65536, "bf16")
    assert full.waves == 1 and full.shape_efficiency == pytest.approx(1.0)
    assert over.compute_s == pytest.approx(2 * full.compute_s, rel=0.05)


def test_grouped_gemm_one_busy_group_equals_its_gemm():
    gpu, profile = gpu_and_profile("h100-sxm")
    n, k = 4096, 7168
    for m in (1, 37, 512, 8192):
        for dtype in ("bf16", "fp8_block128"):
            grouped = grouped_gemm_estimate(gpu, profile, np.array([0, m, 0, 0, 0]), n, k, dtype)
            single = gemm_estimate(gpu, profile, m, n, k, dtype)
            assert grouped.time_s == pytest.approx(single.time_s)
            assert grouped.bytes == pytest.approx(single.bytes)  # empty groups' weights are not read
    assert grouped_gemm_time(gpu, profile, np.zeros(8), n, k, "fp8") == 0.0


def test_grouped_gemm_reads_each_busy_expert_once():
    gpu, profile = gpu_and_profile("h100-sxm")
    n, k = 4096, 7168
    one = grouped_gemm_estimate(gpu, profile, [4], n, k, "fp8")
    eight = grouped_gemm_estimate(gpu, profile, [4] * 8, n, k, "fp8")
    assert eight.bytes == pytest.approx(8 * one.bytes)
    assert eight.bound == "memory"
    # same tokens spread over more experts: more weights to read, never faster
    t = [grouped_gemm_time(gpu, profile, [256 // g] * g, n, k, "fp8") for g in (1, 2, 4, 8, 16, 32)]
    assert t == sorted(t)


def test_memory_bound_time():
    gpu, profile = gpu_and_profile("h200-sxm")
    assert memory_bound_time(gpu, profile, 0) == 0.0
    t = memory_bound_time(gpu, profile, 4.01e9)
    assert t == pytest.approx(1e-3 + profile.kernel_launch_s.value)
    with pytest.raises(MoesimError, match="nbytes"):
        memory_bound_time(gpu, profile, -1)


def test_achieved_tflops():
    assert achieved_tflops(2e12, 1.0) == 2.0
    with pytest.raises(MoesimError, match="time_s"):
        achieved_tflops(1.0, 0.0)


# ---------------------------------------------------------------- bad input

def test_fp4_on_hopper_is_an_error():
    gpu, profile = gpu_and_profile("h100-sxm")
    for dtype in ("fp4", "nvfp4", "mxfp4"):
        with pytest.raises(MoesimError, match="dense_TFLOPs.fp4") as exc:
            gemm_time(gpu, profile, 1024, 1024, 1024, dtype)
        assert "bf16 or fp8" in str(exc.value)
    gpu, profile = gpu_and_profile("b200-sxm")
    assert gemm_time(gpu, profile, 1024, 1024, 1024, "nvfp4") < gemm_time(gpu, profile, 1024, 1024, 1024, "bf16")


@pytest.mark.parametrize("m,n,k,field", [(0, 1, 1, "m"), (1, -5, 1, "n"), (1, 1, float("nan"), "k"),
                                         ("64", 1, 1, "m"), (True, 1, 1, "m")])
def test_non_positive_sizes_are_errors(m, n, k, field):
    gpu, profile = gpu_and_profile("h100-sxm")
    with pytest.raises(MoesimError) as exc:
        gemm_time(gpu, profile, m, n, k, "bf16")
    assert exc.value.field == field


def test_unknown_dtype_and_bad_token_counts():
    gpu, profile = gpu_and_profile("h100-sxm")
    with pytest.raises(MoesimError, match="unknown dtype") as exc:
        gemm_time(gpu, profile, 64, 64, 64, "int3")
    assert exc.value.field == "dtype" and "bf16" in exc.value.fix
    with pytest.raises(MoesimError, match="no tensor-core"):
        gemm_time(gpu, profile, 64, 64, 64, "fp32")
    with pytest.raises(MoesimError, match="tokens_per_group"):
        grouped_gemm_time(gpu, profile, [3, -1], 64, 64, "bf16")
    with pytest.raises(MoesimError, match="tokens_per_group"):
        grouped_gemm_time(gpu, profile, [[1, 2]], 64, 64, "bf16")


def test_compute_imports_no_owned_packages():
    code = ("import sys, moesim.costs.compute, moesim.validation.gemm_model; "
            "print(sorted(m for m in ('networkx', 'simpy', 'click', 'matplotlib', 'numba', 'jinja2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_profile_record_forbids_extra_fields():
    assert ComputeProfile.model_config["extra"] == "forbid"


def test_grouped_gemm_per_owner_matches_the_scalar_model():
    from moesim.costs.compute import grouped_gemm_time, grouped_gemm_times_per_owner, load_compute_profile
    from moesim.specs.hardware import load_gpu
    gpu, prof = load_gpu("h100-sxm"), load_compute_profile("h100-sxm")
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 300, size=64).astype(float)
    counts[::7] = 0
    owner = np.repeat(np.arange(8), 8)
    vector = grouped_gemm_times_per_owner(gpu, prof, counts, owner, 8, 4096, 7168, "fp8")
    for o in range(8):
        assert vector[o] == pytest.approx(grouped_gemm_time(gpu, prof, counts[owner == o], 4096, 7168, "fp8"), rel=1e-12)


def test_fitted_group_cost_is_paid_per_wave_not_per_group():
    """With a kernel fit, a grouped GEMM pays min(groups, waves) group switches: a decode step's
    hundreds of one-row experts run side by side, not one after another; and the vectorised
    per-owner path agrees with the scalar one."""
    from moesim.calibration.kernel_params import resolve_kernel_profile
    from moesim.costs.compute import grouped_gemm_estimate, grouped_gemm_times_per_owner, load_compute_profile
    from moesim.costs.gemm_kernels import fitted_compute_profile
    from moesim.specs.hardware import load_gpu
    gpu = load_gpu("h200-sxm")
    prof = fitted_compute_profile(load_compute_profile("h200-sxm"), "hopper", resolve_kernel_profile("spec").values(),
                                  "deepgemm", "spec")
    assert prof.group_overhead_s > 0
    many = grouped_gemm_estimate(gpu, prof, np.ones(128), 512, 7168, "fp8")
    assert many.waves < 128
    assert many.launch_s == pytest.approx(prof.kernel_launch_s.value + many.waves * prof.group_overhead_s)
    few = grouped_gemm_estimate(gpu, prof, np.full(4, 4096.0), 4096, 7168, "fp8")
    assert few.waves > 4 and few.launch_s == pytest.approx(prof.kernel_launch_s.value + 4 * prof.group_overhead_s)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 40, size=64).astype(float)
    owner = np.repeat(np.arange(8), 8)
    vector = grouped_gemm_times_per_owner(gpu, prof, counts, owner, 8, 512, 7168, "fp8")
    for o in range(8):
        est = grouped_gemm_estimate(gpu, prof, counts[owner == o], 512, 7168, "fp8")
        assert vector[o] == pytest.approx(0.0 if est is None else est.time_s, rel=1e-12)
