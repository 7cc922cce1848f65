"""Calibration: fits recover known hardware parameters from synthetic results, profiles round-trip
with provenance, bad results files are refused with the file and field named.

Tolerances (synthetic results, fixed seed, moesim's own forward models):
* 1 % lognormal noise: efficiencies, HBM fraction and bandwidths within 2 % relative; latency
  (alpha) within 20 %.
* no noise: GEMM efficiencies, bandwidths and latency within 1e-6 relative; the HBM fraction
  within 0.2 % (a median of GBps, which includes the 1.3 us kernel launch of a >= 1 GiB copy).
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from moesim.calibration import fit as fitting
from moesim.calibration import profile as profiles
from moesim.calibration import results as results_file
from moesim.calibration import synthetic
from moesim.core.errors import MoesimError
from moesim.costs.collectives import BUSBW_FACTOR
from moesim.costs.compute import Fraction, gemm_time, load_compute_profile, memory_bound_time
from moesim.specs.hardware import load_gpu, load_system

TRUE = dict(gpu_id="h100-sxm", true_matmul_efficiency={"bf16": 0.71, "fp8": 0.62}, true_memory_efficiency=0.88,
            true_nvlink_GBps=380.0, true_alpha_s=8e-6)
NVLINK_SPEC_GBps = 450.0  # dgx-h100 scale_up.per_gpu_GBps_per_direction


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def noisy():
    results = synthetic.synthetic_results(**TRUE, noise=0.01, seed=7)
    return results, fitting.fit_profile(results, gpu_id="h100-sxm", system_id="dgx-h100")


@pytest.fixture(scope="module")
def exact():
    results = synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)
    return results, fitting.fit_profile(results, gpu_id="h100-sxm", system_id="dgx-h100")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cal")
    paths = [results_file.write_results(r, folder / f"{r['benchmark']}.json")
             for r in synthetic.synthetic_results(**TRUE, noise=0.01, seed=3)]
    profile = fitting.fit_profile(results_file.load_results(paths), gpu_id="h100-sxm", system_id="dgx-h100")
    out = profiles.write_profile(profile, folder / "profile.yaml", sources=[str(p) for p in paths])
    return paths, profile, out


def test_noisy_results_recover_the_true_parameters(noisy):
    _, prof = noisy
    assert rel(prof["matmul_peak_efficiency"]["bf16"]["value"], 0.71) < 0.02
    assert rel(prof["matmul_peak_efficiency"]["fp8"]["value"], 0.62) < 0.02
    assert rel(prof["memory_efficiency"]["value"], 0.88) < 0.02
    p2p = prof["links"]["nvlink_p2p"]
    assert rel(p2p["bandwidth_GBps"]["value"], 380.0) < 0.02
    assert rel(p2p["efficiency"]["value"], 380.0 / NVLINK_SPEC_GBps) < 0.02
    assert rel(p2p["latency_s"]["value"], 8e-6) < 0.20
    for name in ("all_gather.r8.n1", "reduce_scatter.r8.n1", "all_reduce.r8.n1"):
        fit = prof["collectives"][name]
        assert rel(fit["busbw_GBps"]["value"], 380.0) < 0.02
        assert rel(fit["latency_s"]["value"], 8e-6) < 0.20
    # the residual RMS sees the 1 % noise, no more
    for fit in prof["matmul_peak_efficiency"].values():
        assert 0.003 < fit["residual_rms"] < 0.02


def test_zero_noise_is_near_exact(exact):
    _, prof = exact
    assert rel(prof["matmul_peak_efficiency"]["bf16"]["value"], 0.71) < 1e-6
    assert rel(prof["matmul_peak_efficiency"]["fp8"]["value"], 0.62) < 1e-6
    assert rel(prof["memory_efficiency"]["value"], 0.88) < 0.002
    p2p = prof["links"]["nvlink_p2p"]
    assert rel(p2p["bandwidth_GBps"]["value"], 380.0) < 1e-6
    assert rel(p2p["latency_s"]["value"], 8e-6) < 1e-6
    assert prof["matmul_peak_efficiency"]["bf16"]["residual_rms"] < 1e-6


def test_residuals_per_row_and_their_rms(noisy):
    results, prof = noisy
    rows = [r for r in prof["residuals"] if r["quantity"] == "matmul_peak_efficiency.bf16"]
    measured = sum(1 for r in results if r["benchmark"] in ("gemm", "grouped_gemm")
                   for row in r["rows"] if row["dtype"] == "bf16")
    assert len(rows) == measured
    used = [r["rel_error"] for r in rows if r["used_in_fit"]]
    fit = prof["matmul_peak_efficiency"]["bf16"]
    assert fit["rows"] == len(used) < len(rows)  # small GEMMs are reported, not fitted
    assert math.isclose(fit["residual_rms"], math.sqrt(np.mean(np.square(used))))
    assert math.isclose(fit["residual_max"], max(abs(e) for e in used))
    for r in rows:
        assert math.isclose(r["rel_error"], (r["predicted_s"] - r["measured_s"]) / r["measured_s"])


def test_write_then_load_round_trips_with_provenance(written):
    paths, profile, out = written
    loaded = profiles.load_calibration(out)
    assert loaded.gpu == "h100-sxm" and loaded.system == "dgx-h100"
    assert loaded.matmul_peak_efficiency["bf16"].value == pytest.approx(profile["matmul_peak_efficiency"]["bf16"]["value"])
    assert loaded.memory_efficiency.residual_rms == pytest.approx(profile["memory_efficiency"]["residual_rms"])
    assert loaded.links["nvlink_p2p"].latency_s.value == pytest.approx(profile["links"]["nvlink_p2p"]["latency_s"]["value"])
    prov = loaded.provenance
    assert [r.file for r in prov.results] == [str(p) for p in paths]
    assert all(r.sha256 and len(r.sha256) == 64 for r in prov.results)
    assert prov.device["name"] == "synthetic (h100-sxm)" and prov.device["backend"] == "synthetic"
    assert set(prov.device) >= {"driver", "cuda_runtime", "nccl"}
    assert prov.moesim_version and prov.calibrated_at and "k = 2" in prov.error_band
    assert prov.moesim_commit is None or len(prov.moesim_commit) == 40
    assert "gemm.json" in loaded.matmul_peak_efficiency["bf16"].source
    assert loaded.matmul_peak_efficiency["bf16"].source.endswith("by moesim calibrate")
    text = out.read_text()
    assert text.startswith("# Calibration profile") and "\nprovenance:\n" in text
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_a_profile_with_an_unknown_field_is_refused(written, tmp_path):
    _, _, out = written
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.read_text().replace("\nmatmul_peak_efficiency:", "\nmatmul_peak_eficiency:"))
    with pytest.raises(MoesimError) as err:
        profiles.load_calibration(bad)
    assert err.value.field == "matmul_peak_eficiency" and str(bad) in err.value.file


def test_apply_to_compute_changes_gemm_time(written):
    _, _, out = written
    calibration = profiles.load_calibration(out)
    gpu, base = load_gpu("h100-sxm"), load_compute_profile("h100-sxm")
    tuned = profiles.apply_to_compute(base, calibration)
    e_old, e_new = base.matmul_efficiency("bf16"), tuned.matmul_efficiency("bf16")
    assert e_new == calibration.matmul_peak_efficiency["bf16"].value != e_old
    assert "fitted from" in tuned.matmul_peak_efficiency.bf16.source
    # a large compute-bound GEMM scales with 1 / efficiency (launch cost aside)
    launch = base.kernel_launch_s.value
    t_old = gemm_time(gpu, base, 8192, 8192, 8192, "bf16") - launch
    t_new = gemm_time(gpu, tuned, 8192, 8192, 8192, "bf16") - launch
    assert t_new / t_old == pytest.approx(e_old / e_new, rel=1e-9)
    assert tuned.gemm_tiles == base.gemm_tiles and tuned.kernel_launch_s == base.kernel_launch_s
    # memory: the GPU file's hbm_measured_TBps wins in compute.memory_efficiency, so apply_to_gpu too
    assert tuned.memory_efficiency.value == pytest.approx(calibration.memory_efficiency.value)
    gpu_new = profiles.apply_to_gpu(gpu, calibration)
    ratio = (memory_bound_time(gpu_new, tuned, 1e9) - launch) / (memory_bound_time(gpu, base, 1e9) - launch)
    assert ratio == pytest.approx(gpu.hbm_measured_TBps.value / gpu.hbm_bandwidth_TBps.value
                                  / calibration.memory_efficiency.value, rel=1e-9)


def test_apply_refuses_another_gpu(written):
    _, _, out = written
    with pytest.raises(MoesimError, match="calibration is for 'h100-sxm'"):
        profiles.apply_to_compute(load_compute_profile("b200-sxm"), profiles.load_calibration(out))


def test_link_efficiency_overrides(written):
    _, _, out = written
    overrides = profiles.link_efficiency_overrides(profiles.load_calibration(out))
    assert set(overrides) == {"nvlink"}
    assert overrides["nvlink"] == pytest.approx(380.0 / NVLINK_SPEC_GBps, rel=0.02)


def test_multi_node_collectives_calibrate_the_nic():
    """Send/recv and all-to-all across 2 nodes bind on the NIC in moesim's model; rows generated
    at 90 % of the model's spec-rate bus bandwidth must give an ib efficiency of 0.9."""
    system = load_system("dgx-h100")
    rows = []
    for op, ranks in (("send_recv", 2), ("all_to_all", 16)):
        spec, kind = fitting._spec_busbw(system, op, ranks, 2)
        assert kind == "ib"
        beta = 0.9 * spec * 1e9
        factor = BUSBW_FACTOR[op](ranks)
        rows += [{"op": op, "bytes": s, "ranks": ranks, "nodes": 2, "time_s": 20e-6 + s * factor / beta}
                 for s in [2**p for p in range(16, 31, 2)]]
    result = {"schema": results_file.SCHEMA, "benchmark": "collective", "device": {"name": "synthetic (h100-sxm)"},
              "rows": rows, "check": {"passed": True}}
    prof = fitting.fit_profile([result], gpu_id="h100-sxm", system_id="dgx-h100")
    assert prof["collectives"]["send_recv.r2.n2"]["spec_busbw_GBps"] == pytest.approx(50.0)  # 400 Gb/s NIC
    for name in ("send_recv.r2.n2", "all_to_all.r16.n2"):
        fit = prof["collectives"][name]
        assert fit["bottleneck_kind"] == "ib"
        assert fit["efficiency"]["value"] == pytest.approx(0.9, rel=1e-6)
        assert fit["latency_s"]["value"] == pytest.approx(20e-6, rel=1e-6)
    profile = profiles.CalibrationProfile.model_validate(
        {**{k: v for k, v in prof.items() if k not in ("device", "inputs", "memory_efficiency")},
         "provenance": profiles.provenance(prof, ["x.json"])})
    assert profiles.link_efficiency_overrides(profile) == {"ib": pytest.approx(0.9, rel=1e-6)}


def _result_file(tmp_path, mutate, name="r.json"):
    data = copy.deepcopy(synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)[0])
    mutate(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_failed_check_is_refused(tmp_path):
    path = _result_file(tmp_path, lambda d: d["check"].update(passed=False), "failed.json")
    with pytest.raises(MoesimError) as err:
        results_file.load_results([path])
    assert err.value.field == "check.passed" and err.value.file == str(path)
    assert "failed.json" in str(err.value) and "check.passed" in str(err.value)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["rows"][3].pop("time_s"), "rows[3].time_s"),
    (lambda d: d["rows"][0].update(m=-5), "rows[0].m"),
    (lambda d: d["rows"][1].update(dtype="int3"), "rows[1].dtype"),
    (lambda d: d.update(schema="nccl-tests"), "schema"),
    (lambda d: d.update(benchmark="matmul"), "benchmark"),
    (lambda d: d.pop("check"), "check.passed"),
    (lambda d: d["device"].pop("name"), "device.name"),
    (lambda d: d.update(rows={"m": 1}), "rows"),
])
def test_malformed_results_name_file_and_field(tmp_path, mutate, field):
    path = _result_file(tmp_path, mutate)
    with pytest.raises(MoesimError) as err:
        results_file.load_results([path])
    assert err.value.field == field and err.value.file == str(path)


def test_results_that_are_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "moesim-bench/v1",\n  "rows": [1, 2,]}')
    with pytest.raises(MoesimError) as err:
        results_file.load_results([path])
    assert err.value.file == str(path) and err.value.field == "line 2"
    with pytest.raises(MoesimError, match="cannot read file"):
        results_file.load_results([tmp_path / "missing.json"])


def test_memcpy_and_collective_rows_are_checked(tmp_path):
    results = synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)
    memcpy = copy.deepcopy(next(r for r in results if r["benchmark"] == "memcpy"))
    memcpy["rows"][0]["path"] = "nvlink"
    with pytest.raises(MoesimError) as err:
        results_file.check_result(memcpy, file="m.json")
    assert err.value.field == "rows[0].path" and "nvlink_p2p" in err.value.fix
    coll = copy.deepcopy(next(r for r in results if r["benchmark"] == "collective"))
    coll["rows"][2]["ranks"] = 1
    with pytest.raises(MoesimError) as err:
        results_file.check_result(coll, file="c.json")
    assert err.value.field == "rows[2].ranks"


def test_results_from_two_devices_are_refused():
    a = synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)
    b = copy.deepcopy(a[0])
    b["device"]["name"] = "NVIDIA H100 80GB HBM3"
    with pytest.raises(MoesimError, match="different devices"):
        fitting.fit_profile(a + [b], gpu_id="h100-sxm", system_id="dgx-h100")


def test_error_band_convention():
    assert profiles.ERROR_BAND_K == 2.0
    assert profiles.error_band(0.05, 100.0) == pytest.approx((90.0, 110.0))
    assert profiles.error_band(0.0, 3.0) == (3.0, 3.0)
    assert profiles.error_band(0.8, 1.0) == (0.0, pytest.approx(2.6))  # low end kept >= 0
    with pytest.raises(MoesimError):
        profiles.error_band(-0.1, 1.0)
    with pytest.raises(MoesimError):
        profiles.error_band(float("nan"), 1.0)


def test_profile_rms(written):
    _, _, out = written
    calibration = profiles.load_calibration(out)
    worst = profiles.profile_rms(calibration)
    assert worst == max(profiles.profile_rms(calibration, [q]) for q in
                        ["matmul_peak_efficiency.bf16", "matmul_peak_efficiency.fp8", "memory_efficiency",
                         "links.nvlink_p2p", "collectives.all_gather.r8.n1"] + [
                         "collectives.reduce_scatter.r8.n1", "collectives.all_reduce.r8.n1"])
    with pytest.raises(MoesimError, match="not calibrated"):
        profiles.profile_rms(calibration, ["links.host_to_device"])


def test_synthetic_results_are_deterministic_and_marked():
    a = synthetic.synthetic_results(**TRUE, noise=0.01, seed=5)
    b = synthetic.synthetic_results(**TRUE, noise=0.01, seed=5)
    c = synthetic.synthetic_results(**TRUE, noise=0.01, seed=6)
    rows = lambda results: [r["rows"] for r in results]  # noqa: E731 (timestamps say when, not what)
    assert rows(a) == rows(b) and rows(a) != rows(c)
    for result in a:
        results_file.check_result(result, file="synthetic")
        assert result["device"]["name"] == "synthetic (h100-sxm)" and result["device"]["backend"] == "synthetic"
        assert result["parameters"]["true_nvlink_GBps"] == 380.0
    with pytest.raises(MoesimError, match="no fp4 tensor cores"):
        synthetic.synthetic_results(**{**TRUE, "true_matmul_efficiency": {"fp4": 0.5}}, noise=0.0, seed=0)


def test_infer_ids():
    results = synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)
    assert fitting.infer_ids(results) == ("h100-sxm", "dgx-h100")
    assert fitting.infer_ids(results, system_id="dgx-h800") == ("h800-sxm", "dgx-h800")
    real = [dict(results[0], device={"name": "NVIDIA H100 80GB HBM3"})]
    assert fitting.infer_ids(real) == ("h100-sxm", "dgx-h100")
    assert fitting.infer_ids([dict(results[0], device={"name": "NVIDIA B200"})]) == ("b200-sxm", "hgx-b200")
    for name in ("NVIDIA GH200 480GB", "NVIDIA H100 PCIe"):
        with pytest.raises(MoesimError, match="--gpu"):
            fitting.infer_ids([dict(results[0], device={"name": name})])


def test_system_must_match_gpu():
    results = synthetic.synthetic_results(**TRUE, noise=0.0, seed=0)
    with pytest.raises(MoesimError) as err:
        fitting.fit_profile(results, gpu_id="h100-sxm", system_id="hgx-b200")
    assert err.value.field == "system"


def test_shipped_calibration_profiles_load():
    from moesim.calibration.kernel_params import PROFILE_FORMAT, load_kernel_profile
    for path in sorted(profiles.calibration_dir().glob("*.yaml")):
        if PROFILE_FORMAT in path.read_text():  # the kernel-model fit (moesim calibrate --cases)
            assert load_kernel_profile(path).fitted
            continue
        profile = profiles.load_calibration(path)
        assert profile.provenance.results
        if profile.provenance.device.get("backend") == "synthetic":
            assert path.name.startswith("synthetic-")


def _harness_like(tmp_path):
    """Results as moesim.bench.micro writes them: torch dtype names, `peer` / `pcie` paths,
    GBps = bytes copied / time (one direction), an ISO timestamp, a float32 GEMM row."""
    gpu = load_gpu("h100-sxm")
    spec_Bps = gpu.hbm_bandwidth_TBps.value * 1e12
    device = {"name": "NVIDIA H100 80GB HBM3", "backend": "cuda", "torch": "2.13.0", "cuda_runtime": "12.8",
              "driver": "570.86.15", "nccl": "2.26.2", "gpus": 8, "compute_capability": "9.0"}
    head = {"schema": results_file.SCHEMA, "device": device, "timestamp": "2026-11-20T10:00:00+00:00", "host": "node7",
            "check": {"passed": True}}
    memcpy = []
    for size in [2**p for p in range(12, 33, 2)]:
        t_hbm = 2 * size / (0.9 * spec_Bps) + 2e-6
        memcpy.append({"path": "hbm", "direction": "d2d", "engine": "memcpy", "bytes": size, "time_s": t_hbm,
                       "GBps": size / t_hbm / 1e9})
        for path, direction, rate in (("peer", "gpu0->gpu1", 360e9), ("pcie", "h2d", 52e9), ("pcie", "d2h", 50e9)):
            t = 5e-6 + size / rate
            memcpy.append({"path": path, "direction": direction, "engine": "memcpy", "bytes": size, "time_s": t,
                           "GBps": size / t / 1e9})
    prof = load_compute_profile("h100-sxm")
    true = prof.model_copy(update={"matmul_peak_efficiency": prof.matmul_peak_efficiency.model_copy(
        update={"bf16": Fraction(value=0.75, source="test")})})
    gemm = [{"m": s, "n": s, "k": s, "groups": 1, "dtype": "bfloat16", "time_s": gemm_time(gpu, true, s, s, s, "bf16"),
             "tflops": 1.0} for s in (4096, 8192, 16384)]
    gemm.append({"m": 4096, "n": 4096, "k": 4096, "groups": 1, "dtype": "float32", "time_s": 0.01, "tflops": 1.0})
    files = []
    for bench, rows, params in (("memcpy", memcpy, {"peer_access": True}), ("gemm", gemm, {})):
        path = tmp_path / f"{bench}.json"
        path.write_text(json.dumps({**head, "benchmark": bench, "parameters": params, "rows": rows}))
        files.append(path)
    return files


def test_harness_results_vocabulary(tmp_path):
    files = _harness_like(tmp_path)
    results = results_file.load_results(files)
    assert fitting.infer_ids(results) == ("h100-sxm", "dgx-h100")
    prof = fitting.fit_profile(results, gpu_id="h100-sxm", system_id="dgx-h100")
    # HBM: 2 x bytes / time (read + write), not the one-direction GBps column
    assert prof["memory_efficiency"]["value"] == pytest.approx(0.9, rel=0.01)
    assert set(prof["links"]) == {"nvlink_p2p", "host_to_device", "device_to_host"}
    assert prof["links"]["nvlink_p2p"]["bandwidth_GBps"]["value"] == pytest.approx(360.0, rel=1e-6)
    assert prof["links"]["host_to_device"]["efficiency"]["value"] == pytest.approx(52 / 64, rel=1e-6)
    assert prof["links"]["device_to_host"]["latency_s"]["value"] == pytest.approx(5e-6, rel=1e-6)
    assert prof["matmul_peak_efficiency"]["bf16"]["value"] == pytest.approx(0.75, rel=1e-9)
    assert any("fp32 GEMM rows not fitted" in n for n in prof["notes"])
    out = profiles.write_profile(prof, tmp_path / "h100.yaml", sources=[str(f) for f in files])
    loaded = profiles.load_calibration(out)
    assert loaded.provenance.device["driver"] == "570.86.15" and loaded.provenance.device["nccl"] == "2.26.2"
    assert [r.timestamp for r in loaded.provenance.results] == ["2026-11-20T10:00:00+00:00"] * 2
    assert profiles.link_efficiency_overrides(loaded) == {"nvlink": pytest.approx(360 / 450, rel=1e-6)}


def test_peer_copies_without_peer_access_are_not_nvlink(tmp_path):
    files = _harness_like(tmp_path)
    data = json.loads(files[0].read_text())
    data["parameters"]["peer_access"] = False
    files[0].write_text(json.dumps(data))
    prof = fitting.fit_profile(results_file.load_results(files[:1]), gpu_id="h100-sxm", system_id="dgx-h100")
    assert "nvlink_p2p" not in prof["links"] and prof["links"]["peer_pcie"]["kind"] == "pcie"


def test_cpu_results_are_refused(tmp_path):
    files = _harness_like(tmp_path)
    data = json.loads(files[1].read_text())
    data["device"].update(backend="cpu", name="AMD EPYC 7763")
    files[1].write_text(json.dumps(data))
    with pytest.raises(MoesimError) as err:
        fitting.fit_profile(results_file.load_results(files[1:]), gpu_id="h100-sxm", system_id="dgx-h100")
    assert err.value.field == "device.backend"


def test_only_the_fastest_implementation_of_a_shape_is_fitted(exact):
    """cuBLAS's grouped API runs at ~40 % of a cuBLASLt loop on an H100: fitting both would drag
    the efficiency down for a kernel no framework picks."""
    results, prof = exact
    slowed = copy.deepcopy(results)
    grouped = next(r for r in slowed if r["benchmark"] == "grouped_gemm")
    for row in list(grouped["rows"]):
        grouped["rows"].append({**row, "impl": "slow_api", "time_s": row["time_s"] * 2.5})
    refit = fitting.fit_profile(slowed, gpu_id="h100-sxm", system_id="dgx-h100")
    for family in ("bf16", "fp8"):
        assert rel(refit["matmul_peak_efficiency"][family]["value"],
                   prof["matmul_peak_efficiency"][family]["value"]) < 1e-9
        slow = [r for r in refit["residuals"] if "impl=slow_api" in r["label"]]
        assert slow and not any(r["used_in_fit"] for r in slow)


SHIPPED = [("h100-sxm.yaml", "h100-sxm-2026-11-25", "NVIDIA H100 80GB HBM3", 12),
           ("h200-sxm.yaml", "h200-sxm-2026-11-25", "NVIDIA H200", 6)]


@pytest.mark.parametrize("name, folder, device, files", SHIPPED)
def test_shipped_profiles_are_fitted_from_the_committed_measurements(name, folder, device, files):
    """topologies/calibration/<gpu>.yaml comes from real GPU results committed beside it:
    refitting them gives the same values, and the provenance hashes match the files."""
    import hashlib

    shipped = profiles.load_calibration(profiles.calibration_dir() / name)
    assert shipped.provenance.device["name"] == device
    assert shipped.provenance.device["backend"] == "cuda"
    root = profiles.calibration_dir().parent.parent
    paths = [root / r.file for r in shipped.provenance.results]
    measured = profiles.calibration_dir() / "measured" / folder
    assert len(paths) == files and all(p.parent.parent == measured for p in paths)
    for entry, path in zip(shipped.provenance.results, paths):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    refit = fitting.fit_profile(results_file.load_results(paths), gpu_id=shipped.gpu, system_id=shipped.system)
    for family, fit in shipped.matmul_peak_efficiency.items():
        assert refit["matmul_peak_efficiency"][family]["value"] == pytest.approx(fit.value, rel=1e-12)
    assert refit["memory_efficiency"]["value"] == pytest.approx(shipped.memory_efficiency.value, rel=1e-12)
    # no synthetic stand-in: HBM and BF16 within physical bounds and near known figures
    assert 0.8 < shipped.memory_efficiency.value < 0.95
    assert 0.7 < shipped.matmul_peak_efficiency["bf16"].value < 0.95
