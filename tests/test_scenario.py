"""Scenario files: the built-in default, user files, flag overrides, training, and located errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.cluster.scenario import Scenario, Serving, Training, apply_overrides, default_scenario_path, load_scenario
from moesim.core.errors import MoesimError
from moesim.costs.memory import memory_ledger


def default_data() -> dict:
    return yaml.safe_load(default_scenario_path().read_text())


def write(tmp_path: Path, data, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TRAINING = {
    "name": "qwen3-30b-a3b-train-2x-dgx-h100",
    "model": "qwen3-30b-a3b",
    "system": "dgx-h100",
    "gpus": 16,
    "parallel": {"tp": 1, "pp": 1, "ep": 16},
    "dtypes": {"weights": "bf16", "kv_cache": "bf16", "activations": "bf16"},
    "workload": {"kind": "training", "seq_len": 4096, "micro_batch": 1, "global_batch": 1024,
                 "recompute": "full", "zero_stage": 1},
    "runtime": {"framework": "megatron"},
}


# ---------------------------------------------------------------- default and user files
def test_default_scenario_loads():
    sc = load_scenario()
    assert isinstance(sc, Scenario)
    assert sc.model.id == "deepseek-v3"
    assert sc.system.id == "dgx-h100"
    assert sc.gpus == 16
    p = sc.plan
    assert (p.tp, p.pp, p.dp, p.ep, p.etp, p.edp) == (1, 1, 16, 16, 1, 1)
    assert isinstance(sc.input.workload, Serving)
    assert sc.input.workload.phase == "decode"
    assert sc.input.dtypes.weights == "fp8"
    assert sc.source_file == str(default_scenario_path())
    assert 0 < sc.memory_fraction <= 1


def test_default_scenario_path_is_equivalent_to_no_path():
    assert load_scenario(str(default_scenario_path())) == load_scenario()


def test_default_scenario_fits():
    ledger = memory_ledger(load_scenario())
    assert ledger.fits
    assert ledger.max_kv_tokens_per_gpu > 0


def test_user_scenario_loads(tmp_path):
    data = default_data()
    data.update(name="mixtral-tp2", model="mixtral-8x7b", gpus=2, parallel={"tp": 2},
                dtypes={"weights": "bf16"})
    data["workload"]["batch"] = 8
    path = write(tmp_path, data)
    sc = load_scenario(str(path))
    assert sc.input.name == "mixtral-tp2"
    assert sc.model.id == "mixtral-8x7b"
    assert (sc.plan.tp, sc.plan.dp, sc.plan.ep, sc.plan.etp) == (2, 1, 1, 2)
    assert sc.input.workload.batch == 8
    assert sc.source_file == str(path)


def test_user_scenario_with_defaults_only(tmp_path):
    """Only the required fields: everything else takes its documented default."""
    path = write(tmp_path, {"model": "olmoe-1b-7b", "system": "hgx-h200", "gpus": 1,
                            "workload": {"kind": "serving", "phase": "prefill", "batch": 1,
                                         "input_len": 128, "output_len": 1}})
    sc = load_scenario(str(path))
    assert sc.input.name == "unnamed"
    assert sc.input.runtime.framework == "sglang"
    assert sc.input.experts.redundant == 0
    assert sc.input.dtypes.weights == "bf16" and sc.input.dtypes.kv_cache == "bf16"
    assert (sc.plan.tp, sc.plan.pp, sc.plan.dp, sc.plan.ep) == (1, 1, 1, 1)


def test_user_scenario_accepts_attn_dp(tmp_path):
    data = default_data()
    data["parallel"] = {"attn_dp": 16, "ep": 16}
    sc = load_scenario(str(write(tmp_path, data)))
    assert sc.plan.dp == 16


# ---------------------------------------------------------------- overrides
def test_overrides_change_fields():
    sc = load_scenario(None, {"workload.batch": 32, "dtypes.kv_cache": "bf16", "experts.redundant": 16})
    assert sc.input.workload.batch == 32
    assert sc.input.dtypes.kv_cache == "bf16"
    assert sc.input.experts.redundant == 16
    assert sc.plan.ep == 16  # the file's split is kept when no parallel flag is given


def test_gpus_override_drops_file_parallel_section():
    sc = load_scenario(None, {"gpus": 8})
    # the file's dp=16 / ep=16 would not fit 8 GPUs; the split is rebuilt from defaults
    assert (sc.plan.tp, sc.plan.pp, sc.plan.dp, sc.plan.ep, sc.plan.etp) == (1, 1, 8, 1, 1)


def test_gpus_and_ep_override():
    sc = load_scenario(None, {"gpus": 32, "parallel.ep": 32})
    assert (sc.plan.dp, sc.plan.ep, sc.plan.edp) == (32, 32, 1)


def test_single_parallel_override_drops_other_file_sizes():
    """--ep 8 alone: the file's dp=16 is not combined with it; dp is derived again."""
    sc = load_scenario(None, {"parallel.ep": 8})
    assert (sc.plan.tp, sc.plan.dp, sc.plan.ep, sc.plan.edp) == (1, 16, 8, 2)
    sc = load_scenario(None, {"parallel.tp": 2})
    assert (sc.plan.tp, sc.plan.dp, sc.plan.ep, sc.plan.etp) == (2, 8, 1, 2)


def test_none_overrides_are_ignored():
    assert load_scenario(None, {"gpus": None, "parallel.tp": None, "model": None}) == load_scenario()


def test_apply_overrides_does_not_mutate_input():
    data = default_data()
    before = yaml.safe_dump(data)
    out = apply_overrides(data, {"gpus": 8, "workload.batch": 4})
    assert yaml.safe_dump(data) == before
    assert out["parallel"] == {}
    assert out["gpus"] == 8 and out["workload"]["batch"] == 4


def test_apply_overrides_creates_missing_sections():
    out = apply_overrides({"model": "x"}, {"experts.redundant": 4, "dtypes.weights": "fp8"})
    assert out == {"model": "x", "experts": {"redundant": 4}, "dtypes": {"weights": "fp8"}}


def test_user_file_with_overrides(tmp_path):
    data = default_data()
    path = write(tmp_path, data)
    sc = load_scenario(str(path), {"model": "kimi-k2", "gpus": 32, "parallel.ep": 32})
    assert sc.model.id == "kimi-k2"
    assert (sc.plan.dp, sc.plan.ep) == (32, 32)


# ---------------------------------------------------------------- training
def test_training_scenario_loads_and_has_training_states(tmp_path):
    sc = load_scenario(str(write(tmp_path, TRAINING)))
    w = sc.input.workload
    assert isinstance(w, Training)
    assert (w.seq_len, w.micro_batch, w.global_batch, w.recompute, w.zero_stage) == (4096, 1, 1024, "full", 1)
    assert w.optimizer == "adam"
    assert (sc.plan.dp, sc.plan.ep, sc.plan.etp, sc.plan.edp) == (16, 16, 1, 1)
    ledger = memory_ledger(sc)
    per = ledger.per_gpu
    assert per["optimizer_bytes"] > 0
    assert per["gradients_bytes"] > 0
    assert per["kv_cache_bytes"] == 0
    assert ledger.max_micro_batch is not None and ledger.max_micro_batch >= 1
    assert ledger.max_kv_tokens_per_gpu is None
    assert ledger.fits
    data = ledger.to_json()
    assert "max_micro_batch" in data and "max_kv_tokens_per_gpu" not in data


def test_training_scenario_default_framework(tmp_path):
    data = {k: v for k, v in TRAINING.items() if k != "runtime"}
    ledger = memory_ledger(load_scenario(str(write(tmp_path, data))))
    assert ledger.per_gpu["optimizer_bytes"] > 0


def test_training_rejects_serving_fields(tmp_path):
    data = dict(TRAINING, workload=dict(TRAINING["workload"], batch=4))
    with pytest.raises(MoesimError) as info:
        load_scenario(str(write(tmp_path, data)))
    assert "batch" in info.value.field
    assert info.value.problem == "unknown field"


# ---------------------------------------------------------------- located errors
def test_unknown_framework(tmp_path):
    data = default_data()
    data["runtime"] = {"framework": "tensorrt-llm-x"}
    path = write(tmp_path, data)
    with pytest.raises(MoesimError) as info:
        load_scenario(str(path))
    err = info.value
    assert err.field == "runtime.framework"
    assert "tensorrt-llm-x" in err.problem
    assert "sglang" in err.fix and "vllm" in err.fix
    assert str(path) in err.one_line()


def test_unknown_dtype_override():
    with pytest.raises(MoesimError) as info:
        load_scenario(None, {"dtypes.weights": "fp7"})
    assert info.value.field == "dtypes.weights"


def test_unknown_model_is_located_in_file(tmp_path):
    data = default_data()
    data["model"] = "deepseek-v4"
    path = write(tmp_path, data)
    with pytest.raises(MoesimError) as info:
        load_scenario(str(path))
    assert info.value.field == "model"
    assert info.value.file == str(path)
    assert "did you mean 'deepseek-v3'" in info.value.fix


def test_parallel_error_is_located_in_file(tmp_path):
    data = default_data()
    data["parallel"] = {"ep": 12}
    data["gpus"] = 12
    path = write(tmp_path, data)
    with pytest.raises(MoesimError) as info:
        load_scenario(str(path))
    assert info.value.field == "parallel.ep"
    assert info.value.file == str(path)


def test_top_level_list_is_rejected(tmp_path):
    path = write(tmp_path, [default_data()])
    with pytest.raises(MoesimError) as info:
        load_scenario(str(path))
    assert info.value.field == "(top level)"
    assert "mapping" in info.value.problem


def test_unknown_field_names_line(tmp_path):
    data = default_data()
    data["seeed"] = 1
    path = write(tmp_path, data)
    with pytest.raises(MoesimError) as info:
        load_scenario(str(path))
    err = info.value
    assert err.field == "seeed"
    assert "did you mean 'seed'" in err.fix
    lineno = path.read_text().splitlines().index("seeed: 1") + 1
    assert err.file == f"{path}:{lineno}"


def test_error_is_one_line(tmp_path):
    data = default_data()
    data["workload"]["output_len"] = -1
    with pytest.raises(MoesimError) as info:
        load_scenario(str(write(tmp_path, data)))
    assert "\n" not in info.value.one_line()
    assert "output_len" in info.value.field
