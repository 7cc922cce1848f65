"""Coverage of validation/serving_load.yaml, hardware and formats (issue 17): the Blackwell Ultra
systems (hgx-b300, gb300-nvl72) load and simulate, and the number formats it names (nvfp4,
fp8_block, int4_wo, mxfp4) have exact byte sizes and the right tensor-core rate."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.topology_files import load_profile
from moesim.core.errors import MoesimError
from moesim.core.loader import parse_record
from moesim.costs.compute import (gemm_estimate, grouped_gemm_estimate, grouped_gemm_times_per_owner,
                                  load_compute_profile, tensor_peak_flops)
from moesim.specs import precision
from moesim.specs.catalog import system_rows
from moesim.specs.hardware import load_gpu, load_system, system_names

NEW_SYSTEMS = {"hgx-b300": ("b300-sxm", 8, 8), "gb300-nvl72": ("gb300", 4, 72)}


def invoke(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------- hardware

@pytest.mark.parametrize("name", sorted(NEW_SYSTEMS))
def test_new_system_loads_with_blackwell_kernels(name):
    gpu_id, per_node, domain = NEW_SYSTEMS[name]
    system = load_system(name)
    assert name in system_names()
    assert (system.gpu.id, system.gpus_per_node, system.domain_gpus) == (gpu_id, per_node, domain)
    # Blackwell Ultra (SM 10.3) keys the kernel models' Blackwell parameters
    assert system.gpu.arch.value == "blackwell" and system.gpu.sm_version.value == 103
    assert "Blackwell Ultra" in system.gpu.arch.note
    # ConnectX-8: 800 Gb/s per GPU
    assert system.spec.scale_out.nic == "connectx-8"
    assert system.spec.scale_out.per_gpu_Bps == 100e9
    assert system.spec.scale_up.per_gpu_GBps_per_direction.value == 900
    assert load_compute_profile(gpu_id).gpu == gpu_id
    assert load_profile(name).id == name


def test_blackwell_ultra_peaks_and_memory():
    b300, gb300 = load_gpu("b300-sxm"), load_gpu("gb300")
    assert [b300.dense_TFLOPs.bf16.value, b300.dense_TFLOPs.fp8.value, b300.dense_TFLOPs.fp4.value] == [2250, 4500, 14000]
    assert [gb300.dense_TFLOPs.bf16.value, gb300.dense_TFLOPs.fp8.value, gb300.dense_TFLOPs.fp4.value] == [2500, 5000, 15000]
    # device-reported capacity (AIC nvidia-smi MiB), not the 288 GB label
    assert b300.capacity_bytes == pytest.approx(275040 * 2**20, rel=1e-5)
    assert gb300.capacity_bytes == pytest.approx(284208 * 2**20, rel=1e-5)
    assert gb300.host_link.per_direction_GBps.value == 450  # NVLink-C2C to Grace


def test_systems_command_lists_them():
    rows = {row["id"]: row for row in system_rows()}
    assert rows["hgx-b300"]["scale_out_Gbps_per_gpu"] == 800
    assert rows["gb300-nvl72"]["fp4_dense_TFLOPs"] == 15000
    out = invoke("systems")
    assert "hgx-b300" in out and "gb300-nvl72" in out


@pytest.mark.parametrize("args", [("--system", "hgx-b300", "--gpus", 8, "--ep", 8),
                                  ("--system", "gb300-nvl72", "--gpus", 72, "--ep", 72, "--redundant-experts", 32)],
                         ids=["hgx-b300", "gb300-nvl72"])
def test_simulate_runs_on_default_model(args):
    result = json.loads(invoke("simulate", *args, "--json"))
    assert result["system"] == args[1] and result["gpus"] == args[3]
    assert result["model"] == "deepseek-v3"
    assert result["metrics"]["step_time_s"] > 0 and result["metrics"]["tokens_per_s_per_gpu"] > 0
    assert result["memory"]["fits"]


def test_gb300_ep72_needs_redundant_slots_for_256_experts():
    """EP 72 does not divide DeepSeek-V3's 256 experts: a model constraint, not a hardware one."""
    result = CliRunner().invoke(main, ["memory", "--system", "gb300-nvl72", "--gpus", "72", "--ep", "72"])
    assert result.exit_code != 0 and "redundant" in result.output


def test_deepseek_v3_nvfp4_fits_one_gb300_rack():
    ledger = json.loads(invoke("memory", "--system", "gb300-nvl72", "--gpus", 72, "--ep", 72,
                               "--redundant-experts", 32, "--weights-dtype", "nvfp4", "--json"))
    assert ledger["fits"]
    bf16 = json.loads(invoke("memory", "--system", "gb300-nvl72", "--gpus", 72, "--ep", 72,
                             "--redundant-experts", 32, "--weights-dtype", "bf16", "--json"))
    # 4.5-bit weights: well under a third of the BF16 weight bytes would be exact for all-linear
    # weights; embeddings and norms stay BF16, so allow up to 0.4
    assert ledger["per_gpu"]["weights_bytes"] < 0.4 * bf16["per_gpu"]["weights_bytes"]
    assert ledger["per_gpu"]["capacity_bytes"] == pytest.approx(load_gpu("gb300").capacity_bytes)


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("name, expected", [
    ("nvfp4", 0.5 + 1 / 16),       # E2M1 + one E4M3 byte per 16 (per-tensor FP32 scale negligible)
    ("mxfp4", 0.5 + 1 / 32),       # E2M1 + one E8M0 byte per 32
    ("fp8_block", 1 + 4 / 16384),  # E4M3 + one FP32 scale per 128 x 128 block
    ("int4_wo", 0.5 + 2 / 128),    # INT4 + one FP16 scale per group of 128
    ("int4_wo_g32", 0.5 + 2 / 32),  # INT4 + one BF16 scale per group of 32 (Kimi-K2.5's experts)
])
def test_bytes_per_element_is_bits_plus_scales(name, expected):
    assert precision.bytes_per_element(name) == expected
    assert precision.get(name).source.strip()


def test_format_names_of_serving_load_resolve():
    for name in ("bf16", "fp8", "fp8_block", "nvfp4", "int4_wo", "mxfp4"):
        assert name in precision.names()
    assert precision.canonical("fp8_block") == "fp8_block128"
    assert precision.get("nvfp4").family == "fp4" and precision.get("mxfp4").family == "fp4"
    wo = precision.get("int4_wo")
    assert wo.family == "bf16" and wo.weight_only and wo.activations == "bf16"
    assert precision.activation_bytes_per_element("int4_wo") == 2.0
    assert precision.activation_bytes_per_element("nvfp4") == precision.bytes_per_element("nvfp4")


def test_weight_only_activations_must_be_a_compute_format():
    base = {"bits": 4, "family": "bf16", "source": "x"}
    with pytest.raises(MoesimError, match="activations"):
        parse_record(precision.DTypeTable, {"dtypes": {"w": {**base, "activations": "nope"}}})
    with pytest.raises(MoesimError, match="family"):
        parse_record(precision.DTypeTable, {"dtypes": {"w": {**base, "family": "fp8", "activations": "b"},
                                                      "b": {"bits": 16, "family": "bf16", "source": "x"}}})


@pytest.mark.parametrize("gpu_id", ["h200-sxm", "b300-sxm"])
def test_int4_weight_only_gemm_runs_at_bf16_rate_reading_4bit_weights(gpu_id):
    gpu, prof = load_gpu(gpu_id), load_compute_profile(gpu_id)
    assert tensor_peak_flops(gpu, prof, "int4_wo") == tensor_peak_flops(gpu, prof, "bf16")
    n, k = 7168, 2048
    for m in (1, 64, 8192):
        wo, bf = gemm_estimate(gpu, prof, m, n, k, "int4_wo"), gemm_estimate(gpu, prof, m, n, k, "bf16")
        assert wo.compute_s == bf.compute_s and wo.flops == bf.flops
        # A (activations) in BF16, B (weights) at 4 + 16/128 bits, C in BF16
        assert wo.bytes == pytest.approx(m * k * 2 + n * k * (0.5 + 2 / 128) + m * n * 2)
    decode_wo, decode_bf = gemm_estimate(gpu, prof, 1, n, k, "int4_wo"), gemm_estimate(gpu, prof, 1, n, k, "bf16")
    assert decode_wo.memory_s < 0.3 * decode_bf.memory_s  # weight-read bound: ~3.9x fewer bytes
    assert decode_wo.time_s < decode_bf.time_s


def test_weight_only_grouped_gemm_paths_agree():
    gpu, prof = load_gpu("h200-sxm"), load_compute_profile("h200-sxm")
    counts = np.array([3.0, 0.0, 17.0, 5.0, 40.0, 1.0])
    owner = np.array([0, 0, 0, 1, 1, 1])
    per_owner = grouped_gemm_times_per_owner(gpu, prof, counts, owner, 2, 4096, 7168, "int4_wo")
    for o in range(2):
        est = grouped_gemm_estimate(gpu, prof, counts[owner == o], 4096, 7168, "int4_wo")
        assert per_owner[o] == pytest.approx(est.time_s)
        groups = int((counts[owner == o] > 0).sum())
        rows = counts[owner == o].sum()
        assert est.bytes == pytest.approx(rows * 7168 * 2 + groups * 4096 * 7168 * (0.5 + 2 / 128) + rows * 4096 * 2)


def test_fp4_formats_run_at_the_fp4_peak_on_blackwell_ultra():
    gpu, prof = load_gpu("gb300"), load_compute_profile("gb300")
    for name in ("nvfp4", "mxfp4"):
        assert tensor_peak_flops(gpu, prof, name) == pytest.approx(15000e12 * prof.matmul_peak_efficiency.fp4.value)
    assert tensor_peak_flops(gpu, prof, "fp8_block") == tensor_peak_flops(gpu, prof, "fp8_block128")


def test_a_weight_only_format_is_refused_for_computed_tensors():
    """int4_wo stores weights only: as a KV cache (a flag) or activation format (a scenario field)
    it is one error line naming the field, exit 2."""
    from click.testing import CliRunner

    from moesim.cli import main
    from moesim.cluster.scenario import load_scenario
    from moesim.core.errors import MoesimError
    result = CliRunner().invoke(main, ["simulate", "--kv-dtype", "int4_wo"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "weight-only" in lines[0] and "dtypes.kv_cache" in lines[0]
    with pytest.raises(MoesimError) as err:
        load_scenario(None, {"dtypes.activations": "int4_wo"})
    assert err.value.field == "dtypes.activations" and "weight-only" in err.value.one_line()
