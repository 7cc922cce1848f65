"""Trustworthy under bad input and faults (issue 14): documented examples run, a deployment that
cannot run gets no number, every output path is checked before the work, sizes are guarded before
allocation, and names say what they count.

Each test here failed on the code before its fix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.core.errors import MoesimError
from moesim.core.output import check_output_path, write_atomic

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, *needles: str) -> str:
    """Exit 2, exactly one `error:` line, no traceback; the line holds every needle."""
    assert result.exit_code == 2, result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit, result.exc_info
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------- documented examples that crashed
def test_eplb_with_replica_count_simulates_and_costs_memory():
    result = run("simulate", "--gpus", "32", "--ep", "32", "--skew", "zipf:1.2", "--placement", "eplb:32", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    plain = json.loads(run("simulate", "--gpus", "32", "--ep", "32", "--skew", "zipf:1.2", "--json").output)
    assert data["simulation"]["placement"] == "eplb"
    # 32 replica slots hold one more expert per GPU: more weights than without them
    assert data["memory"]["per_gpu"]["weights_bytes"] > plain["memory"]["per_gpu"]["weights_bytes"]


def test_eplb_replicas_that_do_not_divide_are_an_error_naming_the_placement():
    one_error_line(run("simulate", "--gpus", "64", "--ep", "64", "--placement", "eplb:32"), "placement", "288")


def test_whatif_takes_a_placement_with_replicas():
    result = run("whatif", "--set", "placement=eplb:32", "--set", "placement=eplb:16")
    assert result.exit_code == 0, result.output
    assert "placement=eplb:32" in result.output


def test_training_scenario_prints_a_table_and_a_report(tmp_path):
    scenario = tmp_path / "training.yaml"
    scenario.write_text("model: mixtral-8x7b\nsystem: dgx-h100\ngpus: 32\nparallel: {tp: 2, pp: 2, ep: 8}\n"
                        "dtypes: {weights: bf16, kv_cache: bf16}\n"
                        "workload: {kind: training, seq_len: 4096, micro_batch: 1, global_batch: 256, "
                        "recompute: full}\nruntime: {framework: megatron}\n")
    result = run("simulate", scenario, "--report", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "MFU" in result.output and "TFLOP/s per GPU" in result.output and (tmp_path / "r.html").is_file()


# ---------------------------------------------------------------- no number for what cannot run
def test_deployment_over_the_memory_budget_is_refused_with_shortfall_and_a_fix():
    line = one_error_line(run("simulate", "--gpus", "8", "--ep", "8"), "memory", "short by", "GiB")
    assert "--gpus 16 --ep 16" in line and "--ignore-memory" in line


def test_a_batch_that_does_not_fit_suggests_the_largest_that_does():
    line = one_error_line(run("simulate", "--batch", "4096"), "does not fit", "--batch")
    batch = int(line.split("(--batch ")[1].split(")")[0])
    assert run("simulate", "--batch", str(batch)).exit_code == 0
    assert run("simulate", "--batch", str(batch + 1)).exit_code == 2


def test_ignore_memory_shows_the_numbers_and_says_they_cannot_run(tmp_path):
    result = run("simulate", "--gpus", "8", "--ep", "8", "--ignore-memory")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("WARNING: does not fit in VRAM")
    data = json.loads(run("simulate", "--gpus", "8", "--ep", "8", "--ignore-memory", "--json").output)
    assert "cannot run" in data["warnings"][0] and list(data)[0] == "warnings"
    report = tmp_path / "r.html"
    assert run("simulate", "--gpus", "8", "--ep", "8", "--ignore-memory", "--report", report).exit_code == 0
    assert "cannot run" in report.read_text()


def test_a_kv_format_the_gpu_cannot_read_is_refused():
    one_error_line(run("simulate", "--kv-dtype", "fp4"), "dtypes.kv_cache", "h100-sxm", "bf16, fp8")
    one_error_line(run("memory", "--kv-dtype", "fp4"), "dtypes.kv_cache")
    assert run("memory", "--system", "hgx-b200", "--kv-dtype", "fp4").exit_code == 0


# ---------------------------------------------------------------- every output path, before the work
OUTPUTS = [  # (command line up to the output option, option, a good suffix)
    (["simulate"], "--trace", ".json"),
    (["simulate"], "--report", ".html"),
    (["validate", "--cases", str(ROOT / "validation" / "cases.yaml")], "--report", ".png"),
    (["validate", "--cases", str(ROOT / "validation" / "cases.yaml")], "--write-residuals", ".yaml"),
    (["plan", str(ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml")], "-o", ".json"),
    (["plan", str(ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml")], "--report", ".pdf"),
    (["calibrate", str(ROOT / "topologies" / "calibration" / "synthetic-results" / "gemm.json")], "-o", ".yaml"),
    (["import-hf", str(ROOT / "tests" / "data" / "param_counts.yaml")], "-o", ".yaml"),
]


@pytest.mark.parametrize("kind", ["missing folder", "parent is a file", "unwritable folder", "bad suffix",
                                  "a folder"])
@pytest.mark.parametrize("command,option,suffix", OUTPUTS, ids=[f"{c[0]} {o}" for c, o, _ in OUTPUTS])
def test_bad_output_paths_fail_before_any_work(tmp_path, monkeypatch, command, option, suffix, kind):
    import moesim.sim.simulate
    import moesim.validation.run

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")
    monkeypatch.setattr(moesim.sim.simulate, "simulate", no_work)
    monkeypatch.setattr(moesim.validation.run, "validate", no_work)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    path = {"missing folder": tmp_path / "nope" / f"out{suffix}", "parent is a file": a_file / f"out{suffix}",
            "unwritable folder": Path("/proc/self") / f"out{suffix}", "bad suffix": tmp_path / "out.xyz",
            "a folder": tmp_path}[kind]
    one_error_line(run(*command, option, path), option.lstrip("-")[:4])
    assert not path.exists() or path.is_dir() or path == a_file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_writer_turns_an_os_error_into_one_line_and_leaves_nothing(tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    target = check_output_path(folder / "x.json", field="-o")
    folder.rmdir()  # the folder vanished while the work ran
    with pytest.raises(MoesimError, match="cannot write"):
        write_atomic(target, "{}")
    assert not tmp_path.joinpath("gone").exists()


def test_writer_never_creates_folders(tmp_path):
    with pytest.raises(MoesimError):
        write_atomic(tmp_path / "new" / "x.txt", "x")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_is_refused_before_the_work(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_error_line(run("simulate", "--trace", folder / "t.json"), "cannot write")
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------- sizes and silent surprises
def test_zero_tokens_is_an_error_not_a_default():
    one_error_line(run("route", "--tokens", "0"), "tokens")


def test_huge_sizes_are_refused_before_allocation():
    one_error_line(run("route", "--tokens", "1000000000000"), "tokens", "GiB", "at most")
    one_error_line(run("simulate", "--batch", "100000000"), "does not fit")
    one_error_line(run("simulate", "--batch", "100000000", "--ignore-memory"), "tokens", "limit")


def test_empty_cases_file_is_an_error(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases: []\n")
    one_error_line(run("validate", "--cases", cases), "no cases")


def test_binary_profile_is_an_error(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_bytes(bytes(range(128, 256)))
    one_error_line(run("simulate", "--profile", profile), "not a UTF-8 text file")
    one_error_line(run("validate", "--cases", ROOT / "validation" / "cases.yaml", "--profile", profile),
                   "not a UTF-8 text file")


# ---------------------------------------------------------------- names that say what they count
def test_gpus_are_counted_as_gpus_and_boxes_named_with_their_size():
    dgx = run("simulate")
    assert "16 × H100 (2 DGX H100 nodes of 8 GPUs)" in dgx.output
    assert "per 8-GPU DGX H100 node" in dgx.output
    rack = run("simulate", "--system", "gb200-nvl72", "--gpus", "72", "--ep", "72", "--redundant-experts", "32")
    assert "72 × GB200 (1 NVL72 rack)" in rack.output and "per 4-GPU compute tray" in rack.output
    systems = run("systems")
    assert "4-GPU compute tray" in systems.output and "72 GPUs (NVL72 rack)" in systems.output


# ---------------------------------------------------------------- found by tests/test_cli_property.py
@pytest.mark.parametrize("args", [["memory", "--gpus", "abc"], ["simulate", "--batch"], ["nosuch-command"],
                                  ["route", "--tokens", "64k"]])
def test_flags_click_refuses_get_the_one_line_contract(args):
    one_error_line(run(*args), "--help")


def test_huge_cluster_and_odd_capacity_factor_are_errors():
    one_error_line(run("comm", "--gpus", "1000000000000", "--op", "all_to_all"), "gpus", "at most")
    for value in ("nan", "inf"):
        one_error_line(run("route", "--model", "mixtral-8x7b", "--gpus", "8", "--ep", "8", "--capacity-factor", value),
                       "capacity")


def test_binary_hf_config_is_an_error(tmp_path):
    config = tmp_path / "config.json"
    config.write_bytes(bytes(range(128, 256)))
    one_error_line(run("import-hf", config, "-o", tmp_path / "m.yaml"), "not a UTF-8 text file")
    assert not (tmp_path / "m.yaml").exists()


def test_report_of_a_mistyped_result_is_an_error_and_writes_nothing(tmp_path):
    good = json.loads(run("simulate", "--batch", "16", "--json").output)
    good["breakdown"] = {"attention": "not a mapping"}
    good["provenance"] = ["not", "a", "mapping"]
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(good))
    one_error_line(run("report", path, "-o", tmp_path / "r.html"), "INPUT")
    assert not (tmp_path / "r.html").exists()


def test_more_replica_slots_than_gpus_can_hold_is_an_error_not_a_hang():
    one_error_line(run("route", "--model", "mixtral-8x7b", "--gpus", "8", "--ep", "8",
                       "--redundant-experts", "1000000000000"), "experts.redundant", "at most 56")


def test_a_case_measured_as_zero_makes_the_file_malformed(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n- {id: a, what: gemm, system: dgx-h100, gpus: 1, metric: tflops, measured: 0,\n"
                     "   params: {m: 4096, n: 4096, k: 4096, dtype: bf16}, source: test}\n")
    one_error_line(run("validate", "--cases", cases), "measured")


def test_plan_with_a_replica_placement_prunes_the_splits_it_does_not_divide(tmp_path):
    result = run("plan", ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml", "--set", "placement=eplb:32",
                 "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["simulated"] + plan["from_cache"] >= 1
    reasons = " ".join(r["reason"] for r in plan["pruned_reasons"])
    assert "does not fit in VRAM" in reasons or "redundant" in reasons
