"""`moesim route` and `moesim bench kernels` through the CLI: output contracts and bad input."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def run_json(runner, *args):
    result = runner.invoke(main, ["route", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_route_default_scenario_table(runner):
    result = runner.invoke(main, ["route"])
    assert result.exit_code == 0
    assert "imbalance max/mean" in result.output and "scale-out, node-deduplicated (DeepEP)" in result.output


def test_route_json_contract_and_conservation(runner):
    data = run_json(runner)
    for key in ("expert_load", "gpu_load", "imbalance", "dispatch_bytes_matrix", "combine_bytes_matrix",
                "dropped_tokens"):
        assert key in data
    dispatch = np.array(data["dispatch_bytes_matrix"])
    combine = np.array(data["combine_bytes_matrix"])
    assert dispatch.shape == (16, 16)
    assert sum(data["expert_load"]) == data["tokens"] * 8
    assert sum(data["gpu_load"]) == pytest.approx(sum(data["expert_load"]))
    # bytes sent = bytes received; combine mirrors dispatch (BF16 vs FP8 + scales per token)
    assert dispatch.sum(axis=1).sum() == pytest.approx(dispatch.sum(axis=0).sum())
    ratio = 2 * 7168 / (7168 + 4 * 7168 / 128)
    assert np.allclose(combine, dispatch.T * ratio)
    totals = data["dispatch_totals"]
    parts = totals["local_bytes"] + totals["nvlink_direct_bytes"] + totals["scale_out_direct_bytes"]
    assert parts == pytest.approx(dispatch.sum())


def test_route_is_deterministic(runner):
    assert run_json(runner, "--skew", "zipf:1.0") == run_json(runner, "--skew", "zipf:1.0")


def test_eplb_flattens_zipf_skew_at_ep64(runner):
    common = ["--gpus", "64", "--ep", "64", "--tokens", "32768", "--skew", "zipf:1.0"]
    plain = run_json(runner, *common, "--placement", "contiguous")
    eplb = run_json(runner, *common, "--placement", "eplb:64")
    assert eplb["imbalance"] < 0.5 * plain["imbalance"]
    assert eplb["redundant_experts"] == 64 and eplb["replica_bytes_per_gpu_per_layer"] > 0


def test_capacity_factor_reports_drops(runner):
    data = run_json(runner, "--model", "mixtral-8x7b", "--gpus", "8", "--ep", "8", "--skew", "zipf:2.0",
                    "--tokens", "4096", "--capacity-factor", "1.0")
    assert data["dropped_tokens"] > 0


@pytest.mark.parametrize("args,field", [
    (["--skew", "zipf:-1"], "skew"),
    (["--skew", "dirichlet:0"], "skew"),
    (["--placement", "greedy"], "placement"),
    (["--placement", "eplb:x"], "placement"),
    (["--gpus", "64", "--ep", "64", "--placement", "eplb:32"], "parallel.ep"),
    (["--layer", "99"], "layer"),
    (["--tokens", "-5"], "tokens"),
    (["--node-limit", "0"], "routing.node_limit"),
    (["--skew", "file:/nonexistent.csv"], "skew"),
])
def test_route_bad_input_is_one_line(runner, args, field):
    result = runner.invoke(main, ["route", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]
    assert "Traceback" not in result.output


def test_route_popularity_file_with_wrong_shape(runner, tmp_path):
    path = tmp_path / "pop.npy"
    np.save(path, np.ones((2, 5)))
    result = runner.invoke(main, ["route", "--skew", f"file:{path}"])
    assert result.exit_code == 2 and "(1 or 58, 256)" in result.stderr


def test_bench_kernels_json_contract(runner):
    result = runner.invoke(main, ["bench", "kernels", "--tokens", "20000", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for section in ("routing", "traffic"):
        for key in ("tokens_per_s", "numpy_tokens_per_s", "speedup_vs_numpy", "rng_floor_tokens_per_s",
                    "ratio_to_rng_floor"):
            assert data[section][key] > 0
