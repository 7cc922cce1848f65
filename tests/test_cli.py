"""The `moesim` command line: normal output of each command, and the bad-input contract.

Contract (project brief): a malformed YAML, an unknown model/system name, a parallel split that
does not divide the GPU count or the expert count, a negative or zero size, an unknown field —
each gives ONE line on stderr starting with `error:` that names the field and the fix, exit code
2, no traceback, and no file written.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import default_scenario_path

PART_KEYS = ("weights_bytes", "kv_cache_bytes", "activations_bytes", "buffers_bytes",
             "reserved_bytes", "optimizer_bytes", "gradients_bytes")
PER_GPU_KEYS = PART_KEYS + ("total_bytes", "capacity_bytes")

REQUIRED_MODELS = {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "mixtral-8x7b", "mixtral-8x22b",
                   "qwen3-235b-a22b", "qwen3-30b-a3b", "llama4-scout", "llama4-maverick", "kimi-k2",
                   "gpt-oss-120b", "gpt-oss-20b", "dbrx", "grok-1", "olmoe-1b-7b"}
REQUIRED_SYSTEMS = {"dgx-h100", "dgx-h800", "hgx-h200", "hgx-b200", "gb200-nvl72"}

HEAVY_MODULES = ("numba", "simpy", "networkx", "matplotlib", "pydantic")


# ---------------------------------------------------------------- helpers
@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(main, [str(a) for a in args])


def default_data() -> dict:
    return yaml.safe_load(default_scenario_path().read_text())


def write_scenario(tmp_path: Path, data: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_text_scenario(tmp_path: Path, old: str, new: str, name: str = "scenario.yaml") -> Path:
    """Copy the default scenario text with one textual replacement (keeps comments and layout)."""
    text = default_scenario_path().read_text()
    assert old in text, f"{old!r} not in default.yaml; update the test"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def assert_one_error(result, *needles: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting 'error:', no traceback, needles in it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    # anything other than the SystemExit(2) raised by the CLI would be an uncaught exception
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ---------------------------------------------------------------- memory
def test_memory_default_table(runner):
    result = invoke(runner, "memory")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("weights", "KV cache", "fits: yes", "max KV tokens per GPU"):
        assert text in out
    assert result.stderr == ""


def _check_ledger_json(data: dict) -> None:
    per = data["per_gpu"]
    assert set(PER_GPU_KEYS) <= set(per)
    for key in PER_GPU_KEYS:
        assert isinstance(per[key], (int, float)) and per[key] >= 0, key
    assert isinstance(data["fits"], bool)
    assert sum(per[k] for k in PART_KEYS) == pytest.approx(per["total_bytes"], rel=1e-9)
    assert per["capacity_bytes"] > 0


def test_memory_json(runner):
    result = invoke(runner, "memory", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_ledger_json(data)
    assert data["fits"] is True
    assert isinstance(data["max_kv_tokens_per_gpu"], int) and data["max_kv_tokens_per_gpu"] > 0


def test_memory_flags_without_file(runner):
    result = invoke(runner, "memory", "--model", "deepseek-v3", "--system", "dgx-h100", "--gpus", "16",
                    "--ep", "16", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_ledger_json(data)
    assert isinstance(data["max_kv_tokens_per_gpu"], int) and data["max_kv_tokens_per_gpu"] > 0


def test_memory_table_and_json_agree(runner):
    """The table shows the same fit verdict as the JSON."""
    table = invoke(runner, "memory", "--model", "mixtral-8x7b", "--gpus", "2", "--tp", "2",
                   "--weights-dtype", "bf16")
    as_json = invoke(runner, "memory", "--model", "mixtral-8x7b", "--gpus", "2", "--tp", "2",
                     "--weights-dtype", "bf16", "--json")
    assert table.exit_code == 0 and as_json.exit_code == 0, (table.output, as_json.output)
    verdict = "fits: yes" if json.loads(as_json.stdout)["fits"] else "fits: NO"
    assert verdict in table.stdout
    assert "tp=2" in table.stdout


def test_memory_user_scenario_file(runner, tmp_path):
    data = default_data()
    data["workload"]["batch"] = 8
    path = write_scenario(tmp_path, data)
    result = invoke(runner, "memory", path, "--json")
    assert result.exit_code == 0, result.output
    _check_ledger_json(json.loads(result.stdout))


# ---------------------------------------------------------------- catalogs
def test_models_json(runner):
    result = invoke(runner, "models", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert {"id", "total_params", "active_params", "kv_bytes_per_token"} <= set(row), row
        assert 0 < row["active_params"] < row["total_params"], row["id"]
        assert row["kv_bytes_per_token"] > 0, row["id"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert REQUIRED_MODELS <= set(ids), REQUIRED_MODELS - set(ids)


def test_models_table(runner):
    result = invoke(runner, "models")
    assert result.exit_code == 0, result.output
    for model in REQUIRED_MODELS:
        assert model in result.stdout


def test_systems_json(runner):
    result = invoke(runner, "systems", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    ids = {r["id"] for r in rows}
    assert REQUIRED_SYSTEMS <= ids, REQUIRED_SYSTEMS - ids


def test_systems_table(runner):
    result = invoke(runner, "systems")
    assert result.exit_code == 0, result.output
    for system in REQUIRED_SYSTEMS:
        assert system in result.stdout


# ---------------------------------------------------------------- bad input
def test_malformed_yaml_unclosed_bracket(runner, tmp_path):
    path = write_text_scenario(tmp_path, "parallel: {tp: 1, dp: 16, ep: 16, pp: 1}",
                               "parallel: {tp: 1, dp: 16, ep: 16, pp: 1")
    line = assert_one_error(invoke(runner, "memory", path), str(path), "malformed YAML")
    assert "line " in line


def test_malformed_yaml_bad_indentation(runner, tmp_path):
    path = write_text_scenario(tmp_path, "\nmodel: deepseek-v3", "\n  model: deepseek-v3")
    line = assert_one_error(invoke(runner, "memory", path), str(path), "malformed YAML")
    assert "line " in line


def test_unknown_model_suggests_closest(runner):
    assert_one_error(invoke(runner, "memory", "--model", "deepseek-v4"),
                     "model", "deepseek-v4", "did you mean", "'deepseek-v3'")


def test_unknown_model_in_file(runner, tmp_path):
    data = default_data()
    data["model"] = "mixtral-8x7"
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), str(path), "model", "did you mean", "mixtral-8x7b")


def test_unknown_system_suggests_closest(runner):
    assert_one_error(invoke(runner, "memory", "--system", "dgx-h10"),
                     "system", "dgx-h10", "did you mean", "'dgx-h100'")


def test_tp_does_not_divide_gpus(runner):
    line = assert_one_error(invoke(runner, "memory", "--gpus", "16", "--tp", "3"), "parallel.tp")
    assert "16" in line and "use " in line


def test_ep_does_not_divide_experts(runner):
    line = assert_one_error(invoke(runner, "memory", "--model", "deepseek-v3", "--gpus", "12", "--ep", "12"),
                            "parallel.ep", "256", "experts.redundant")
    # 256 + 8 = 264 = 22 x 12: the suggested redundant count must actually make ep divide the slots
    assert "experts.redundant (--redundant-experts) to 8" in line


def test_ep_fix_suggested_redundant_count_works(runner):
    result = invoke(runner, "memory", "--model", "deepseek-v3", "--gpus", "12", "--ep", "12",
                    "--redundant-experts", "8", "--json")
    assert result.exit_code == 0, result.output


def test_dp_does_not_match_gpus(runner):
    assert_one_error(invoke(runner, "memory", "--gpus", "16", "--dp", "3"), "parallel.dp")


@pytest.mark.parametrize("args, field", [
    (["--gpus", "-8"], "gpus"),
    (["--gpus", "0"], "gpus"),
    (["--batch", "0"], "batch"),
    (["--batch", "-1"], "batch"),
    (["--input-len", "-5"], "input_len"),
    (["--output-len", "0"], "output_len"),
    (["--redundant-experts", "-1"], "experts.redundant"),
    (["--gpus", "16", "--tp", "0"], "tp"),
    (["--gpus", "16", "--ep", "-2"], "ep"),
])
def test_nonpositive_size_flag(runner, args, field):
    assert_one_error(invoke(runner, "memory", *args), field)


def test_negative_input_len_in_file(runner, tmp_path):
    path = write_text_scenario(tmp_path, "input_len: 2000", "input_len: -5")
    assert_one_error(invoke(runner, "memory", path), str(path), "input_len", "-5")


def test_negative_redundant_experts_in_file(runner, tmp_path):
    path = write_text_scenario(tmp_path, "experts: {redundant: 0}", "experts: {redundant: -1}")
    assert_one_error(invoke(runner, "memory", path), str(path), "experts.redundant", "-1")


def test_zero_gpus_in_file(runner, tmp_path):
    data = default_data()
    data["gpus"] = 0
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), str(path), "gpus")


@pytest.mark.parametrize("old, new, field", [
    ("batch: 64", "batch: 0", "workload.batch"),
    ("input_len: 2000", "input_len: -5", "workload.input_len"),
])
def test_workload_error_names_real_field_path(runner, tmp_path, old, new, field):
    path = write_text_scenario(tmp_path, old, new)
    lines = path.read_text().splitlines()
    lineno = next(i for i, text in enumerate(lines, 1) if text.strip().startswith(new))
    line = assert_one_error(invoke(runner, "memory", path), field, f"{path}:{lineno}:")
    assert "workload.serving" not in line


def test_unknown_top_level_field_suggests(runner, tmp_path):
    path = write_text_scenario(tmp_path, "\nparallel:", "\nparalel:")
    line = assert_one_error(invoke(runner, "memory", path), str(path), "paralel", "unknown field",
                            "did you mean 'parallel'")
    assert f"{path}:11" in line  # the line of the misspelt key


def test_unknown_nested_field_suggests(runner, tmp_path):
    path = write_text_scenario(tmp_path, "dtypes: {weights: fp8", "dtypes: {weigths: fp8")
    assert_one_error(invoke(runner, "memory", path), "dtypes.weigths", "unknown field",
                     "did you mean 'weights'")


def test_unknown_parallel_field_suggests(runner, tmp_path):
    data = default_data()
    data["parallel"]["epp"] = 2
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), "parallel.epp", "unknown field")


def test_unknown_workload_field_suggests(runner, tmp_path):
    data = default_data()
    data["workload"]["batchsize"] = 3
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), "workload.batchsize", "unknown field",
                     "did you mean 'batch'")


def test_misspelt_required_workload_field_named(runner, tmp_path):
    data = default_data()
    data["workload"]["batchsize"] = data["workload"].pop("batch")
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), "batchsize", "did you mean 'batch'")


def test_unknown_workload_kind(runner, tmp_path):
    path = write_text_scenario(tmp_path, "kind: serving", "kind: servng")
    assert_one_error(invoke(runner, "memory", path), "workload", "servng", "serving")


@pytest.mark.parametrize("flag, field", [
    ("--weights-dtype", "dtypes.weights"),
    ("--expert-dtype", "dtypes.expert_weights"),
    ("--kv-dtype", "dtypes.kv_cache"),
])
def test_unknown_dtype(runner, flag, field):
    assert_one_error(invoke(runner, "memory", flag, "fp7"), field, "fp7", "bf16")


def test_unknown_framework(runner, tmp_path):
    path = write_text_scenario(tmp_path, "framework: sglang", "framework: sglan")
    assert_one_error(invoke(runner, "memory", path), "runtime.framework", "sglang")


def test_scenario_is_a_list(runner, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model: deepseek-v3\n- system: dgx-h100\n")
    assert_one_error(invoke(runner, "memory", path), str(path), "mapping")


def test_scenario_is_empty(runner, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert_one_error(invoke(runner, "memory", path), str(path), "mapping")


def test_missing_required_field(runner, tmp_path):
    data = default_data()
    del data["system"]
    path = write_scenario(tmp_path, data)
    assert_one_error(invoke(runner, "memory", path), "system", "missing")


def test_nonexistent_scenario_path(runner, tmp_path):
    path = tmp_path / "nope.yaml"
    assert_one_error(invoke(runner, "memory", path), str(path), "cannot read")


def test_import_hf_malformed_json_writes_nothing(runner, tmp_path):
    src = tmp_path / "config.json"
    src.write_text('{"model_type": "mixtral", "hidden_size": ')
    out = tmp_path / "out.yaml"
    assert_one_error(invoke(runner, "import-hf", src, "-o", out), str(src), "malformed JSON")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left either


def test_import_hf_not_an_object_writes_nothing(runner, tmp_path):
    src = tmp_path / "config.json"
    src.write_text("[1, 2, 3]")
    out = tmp_path / "out.yaml"
    assert_one_error(invoke(runner, "import-hf", src, "-o", out), str(src))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_import_hf_missing_file_writes_nothing(runner, tmp_path):
    out = tmp_path / "out.yaml"
    assert_one_error(invoke(runner, "import-hf", tmp_path / "nope.json", "-o", out), "nope.json")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- help and startup
@pytest.mark.parametrize("args", [[], ["memory"], ["models"], ["systems"], ["import-hf"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(runner, args, flag):
    result = invoke(runner, *args, flag)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_group_help_lists_commands(runner):
    result = invoke(runner, "--help")
    for command in ("memory", "models", "systems", "import-hf"):
        assert command in result.stdout


def test_python_m_moesim_help():
    proc = subprocess.run([sys.executable, "-m", "moesim", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert proc.stderr == ""


HELP_IMPORTS = """
import json, runpy, sys
sys.argv = ["moesim"] + sys.argv[1:]
try:
    runpy.run_module("moesim", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(m.split(".")[0] for m in sys.modules)}))
"""


@pytest.mark.parametrize("args", [["--help"], ["memory", "--help"], ["models", "--help"]])
def test_help_imports_no_heavy_modules(args):
    """`moesim --help` must start instantly: no numerics, simulation or validation libraries."""
    proc = subprocess.run([sys.executable, "-c", HELP_IMPORTS, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None)
    loaded = set(report["modules"])
    assert "moesim" in loaded  # the check really ran the CLI
    heavy = sorted(set(HEAVY_MODULES) & loaded)
    assert heavy == [], f"imported at help time: {heavy}"


def test_help_importtime_has_no_heavy_modules():
    """Same guarantee measured independently with `python -X importtime`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "moesim", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[-1].strip()
            imported.add(name.split(".")[0])
    assert "click" in imported  # the parse worked
    assert not set(HEAVY_MODULES) & imported, sorted(set(HEAVY_MODULES) & imported)
