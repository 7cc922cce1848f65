"""TensorRT-LLM as a serving framework (`workloads/frameworks.yaml` trtllm, `moesim serve --framework trtllm`).

The record is data with sources: every value carries one, the batching values are trtllm-serve's
defaults (max_batch_size 2048, max_num_tokens 8192, CUDA graphs for 1..31, 32, 64, 128 without
padding, GUARANTEED_NO_EVICT, chunked prefill and overlap scheduler as documented), and the
scheduler runs it: every request finishes once with its output length, KV stays within capacity,
same seed -> same bytes; the CLI takes its framework names from the data.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moesim.calibration.kernel_params import resolve_kernel_profile
from moesim.cli import main
from moesim.cluster.scenario import framework_table, load_scenario
from moesim.core.result import to_json
from moesim.serve.load import make_load
from moesim.serve.run import serve
from moesim.serve.scheduler import Policy
from moesim.specs.hardware import Sourced

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2, "runtime.framework": "trtllm"}
CHEAP_ARGS = ["--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2"]
ISL, OSL = 256, 32


def sourced_fields(record) -> list[tuple[str, Sourced]]:
    """Every Sourced value of a record, recursively, with its path."""
    out = []
    for name in type(record).model_fields:
        value = getattr(record, name)
        if isinstance(value, Sourced):
            out.append((name, value))
        elif hasattr(type(value), "model_fields"):
            out += [(f"{name}.{sub}", v) for sub, v in sourced_fields(value)]
    return out


def test_trtllm_record_every_value_has_a_source():
    fw = framework_table().frameworks["trtllm"]
    fields = dict(sourced_fields(fw))
    assert {"memory_fraction", "batching.step_policy", "batching.versions", "batching.overlap_scheduler"} <= set(fields)
    for path, value in fields.items():
        assert value.source.strip(), path
    b = fw.batching
    assert b.max_running_requests_per_rank.value == 2048 and b.step_token_budget.value == 8192
    assert b.step_policy.value == "mixed" and "neither" in b.step_policy.note   # the departure is stated
    assert b.cuda_graph_batch_sizes.value.sizes() == tuple(range(1, 32)) + (32, 64, 128)
    assert b.chunked_prefill.value is False and b.cuda_graph_padding.value is False
    assert b.kv_admission.value == "whole_request" and b.overlap_scheduler.value is True
    assert fw.memory_fraction.value == 0.9
    # the other frameworks leave the new, optional fields unrecorded rather than guessed
    assert framework_table().frameworks["vllm"].batching.chunked_prefill is None


def test_policy_of_trtllm_scenario():
    policy = Policy.of(load_scenario(None, CHEAP))
    assert policy.framework == "trtllm" and policy.max_running == 2048 and policy.token_budget == 8192
    assert policy.padded(20) == 20 and policy.padded(33) == 64 and policy.padded(129) == 129
    values = resolve_kernel_profile(None).values()   # the profile's serving overheads, as validate runs them
    assert policy.cpu_overhead_s == values["serving.step_cpu_ms.trtllm"] / 1e3
    assert policy.request_overhead_s == values["serving.request_overhead_ms.trtllm"] / 1e3
    assert policy.kv_handoff_s == values["serving.disagg_handoff_ms.trtllm"] / 1e3
    layers = load_scenario(None, CHEAP).model.num_hidden_layers   # pp 1: a rank runs every layer
    assert policy.layer_overhead_s == pytest.approx(values["serving.layer_overhead_us.trtllm.fp8"] * layers / 1e6)
    assert policy.step_overhead_s == pytest.approx(policy.cpu_overhead_s + policy.layer_overhead_s)
    assert policy.prefill_scale == values["serving.prefill_scale.trtllm"]


@pytest.mark.parametrize("load", [dict(concurrency=16), dict(rate=40.0)])
def test_trtllm_serves_every_request_once_within_kv(load):
    r = serve(load_scenario(None, CHEAP), make_load(isl=ISL, osl=OSL, requests=60, warmup=4, **load))
    assert r["framework"] == "trtllm" and r["scheduler"]["policy"]["step_policy"] == "mixed"
    assert r["_requests"]["finishes"] == [1] * 64 and r["_requests"]["output_tokens"] == [OSL] * 64
    s = r["scheduler"]
    assert 0 < s["peak_kv_tokens_per_rank"] <= s["peak_kv_reserved_tokens_per_rank"] <= s["kv_capacity_tokens_per_rank"]
    assert s["peak_running_per_rank"] <= 2048
    assert not any("per-step CPU time is not published" in a for a in r["assumptions"])


def test_trtllm_disagg_runs():
    from moesim.serve.disagg import make_disagg
    r = serve(load_scenario(None, CHEAP), make_load(isl=ISL, osl=OSL, requests=30, concurrency=8),
              disagg=make_disagg("disagg", 1, 1))
    assert r["framework"] == "trtllm" and r["_requests"]["finishes"] == [1] * 30


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_cli_framework_trtllm_same_seed_same_bytes(runner):
    args = ["serve", *CHEAP_ARGS, "--framework", "trtllm", "--rate", "30", "--isl", str(ISL), "--osl", str(OSL),
            "--requests", "30", "--seed", "5", "--json"]
    runs = [runner.invoke(main, args) for _ in range(2)]
    assert all(run.exit_code == 0 for run in runs), runs[0].output
    assert runs[0].stdout == runs[1].stdout
    assert json.loads(runs[0].stdout)["framework"] == "trtllm"


@pytest.mark.parametrize("name", ["megatron", "tensorrt"])
def test_cli_framework_choices_come_from_the_data(runner, tmp_path, name):
    """A framework without a batching policy, or an unknown one: one error line naming the servable
    frameworks (read from workloads/frameworks.yaml), exit 2, nothing written."""
    trace = tmp_path / "t.json"
    result = runner.invoke(main, ["serve", *CHEAP_ARGS, "--framework", name, "--concurrency", "2", "--isl", "8",
                                  "--osl", "8", "--trace", str(trace)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    servable = sorted(n for n, f in framework_table().frameworks.items() if f.batching is not None)
    assert len(lines) == 1 and lines[0].startswith("error:") and "--framework" in lines[0]
    assert f"use one of: {', '.join(servable)}" in lines[0] and "trtllm" in servable
    assert list(tmp_path.iterdir()) == []


def test_serve_json_is_deterministic_for_trtllm():
    sc = load_scenario(None, CHEAP)
    load = make_load(isl=ISL, osl=OSL, requests=20, concurrency=4, seed=2)
    a, b = serve(sc, load), serve(sc, load)
    strip = [k for k in a if k.startswith("_")]
    assert to_json({k: v for k, v in a.items() if k not in strip}) == to_json({k: v for k, v in b.items()
                                                                                 if k not in strip})
