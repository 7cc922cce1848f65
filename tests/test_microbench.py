"""The PyTorch microbenchmark harness on CPU: data checks, results schema, nccl-tests conventions."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moesim.bench.micro.collectives import BUSBW_FACTOR, COLLECTIVE_OPS  # noqa: E402
from moesim.bench.micro.ep_dispatch import routed_masks  # noqa: E402
from moesim.bench.micro.results import ROW_FIELDS, SCHEMA, TOP_FIELDS, load_results, write_results  # noqa: E402
from moesim.bench.micro.run import COLUMNS, format_table, run_benchmark  # noqa: E402
from moesim.core.errors import MoesimError  # noqa: E402

DEVICE_KEYS = {"name", "backend", "torch", "cuda_runtime", "driver", "nccl", "gpus", "compute_capability"}


def _assert_schema(data: dict, benchmark: str) -> None:
    assert set(TOP_FIELDS) <= set(data)
    assert data["schema"] == SCHEMA and data["benchmark"] == benchmark
    assert set(data["device"]) == DEVICE_KEYS
    assert data["device"]["backend"] == "cpu" and data["device"]["cuda_runtime"] is None
    assert data["device"]["nccl"] is None and data["device"]["compute_capability"] is None
    assert data["timestamp"].endswith("+00:00")
    assert data["rows"], "a passing run times something"
    for row in data["rows"]:
        assert set(ROW_FIELDS[benchmark]) <= set(row)


def _run_and_load(tmp_path, name: str, **kwargs) -> dict:
    path = tmp_path / f"{name}.json"
    data = run_benchmark(name, backend="cpu", quick=True, json_path=path, **kwargs)
    assert data["check"]["passed"], data["check"]
    _assert_schema(data, name)
    loaded = load_results(path)
    assert loaded["rows"] == json.loads(json.dumps(data["rows"]))
    table = format_table(loaded)
    for key in loaded["parameters"]:
        assert f"#   {key}: " in table, f"the header lists every parameter ({key})"
    assert "# check: PASSED" in table
    units = [unit for _, _, unit, _, _ in COLUMNS[name] if unit]
    assert any(all(unit in line for unit in units) for line in table.splitlines()), "units row"
    return loaded


@pytest.mark.parametrize("name", ["gemm", "grouped_gemm"])
def test_gemm_quick_passes_and_writes_results(tmp_path, name):
    data = _run_and_load(tmp_path, name, sizes=[32, 64], iters=2, warmup=1)
    assert data["parameters"]["dtype"] == "float32"  # CPU runs float32; CUDA runs BF16
    for row in data["rows"]:
        assert row["groups"] == (1 if name == "gemm" else 4)
        assert row["tflops"] == pytest.approx(2 * row["m"] * row["n"] * row["k"] * row["groups"]
                                              / row["time_s"] / 1e12)


def test_memcpy_quick_passes_and_writes_results(tmp_path):
    data = _run_and_load(tmp_path, "memcpy")
    assert {(r["path"], r["direction"]) for r in data["rows"]} == {("host", "host_to_host")}
    for row in data["rows"]:  # a memory path counts bytes read + written
        assert row["GBps"] == pytest.approx(2 * row["bytes"] / row["time_s"] / 1e9)


def test_collectives_quick_two_ranks_gloo(tmp_path):
    data = _run_and_load(tmp_path, "collective")
    assert data["parameters"]["process_group"] == "gloo" and data["parameters"]["ranks"] == 2
    ops = {row["op"] for row in data["rows"]}
    assert ops == set(COLLECTIVE_OPS)
    assert max(row["bytes"] for row in data["rows"]) == 1 << 20  # quick: up to 1 MiB
    for row in data["rows"]:
        assert row["ranks"] == 2
        assert row["algbw_GBps"] == pytest.approx(row["bytes"] / row["time_s"] / 1e9)
        assert row["busbw_GBps"] == pytest.approx(row["algbw_GBps"] * BUSBW_FACTOR[row["op"]](2))


def test_busbw_factors_follow_nccl_tests():
    for n in (1, 2, 8, 64):
        assert BUSBW_FACTOR["all_reduce"](n) == pytest.approx(2 * (n - 1) / n)
        for op in ("all_gather", "reduce_scatter", "all_to_all"):
            assert BUSBW_FACTOR[op](n) == pytest.approx((n - 1) / n)
    assert set(BUSBW_FACTOR) == set(COLLECTIVE_OPS)


def test_ep_dispatch_quick_real_skewed_counts(tmp_path):
    data = _run_and_load(tmp_path, "ep_dispatch")
    (row,) = data["rows"]
    assert (row["tokens_per_rank"], row["ranks"], row["hidden"]) == (256, 2, 256)
    assert (row["experts"], row["topk"], row["skew"]) == (256, 8, "zipf:1")
    # conservation: the bytes moved are exactly the (token, destination rank) pairs of the routing
    masks, _ = routed_masks("deepseek-v3", "zipf:1.0", 256, 2, seed=0, layer=0)
    assert row["dispatch_bytes"] == row["combine_bytes"] == int(masks.sum()) * 256 * 2
    assert int(masks.any(axis=2).sum()) == 2 * 256  # every token goes somewhere
    assert row["offrank_bytes"] < row["dispatch_bytes"]


def test_routed_masks_follow_contiguous_placement():
    masks, info = routed_masks("olmoe-1b-7b", "zipf:1.2", 64, 4, seed=3, layer=0)
    assert masks.shape == (4, 64, 4) and info["experts"] == 64 and info["topk"] == 8
    per_token = masks.sum(axis=2)
    assert per_token.min() >= 1 and per_token.max() <= 4
    with pytest.raises(MoesimError, match="ranks"):
        routed_masks("deepseek-v3", "uniform", 8, 3, seed=0, layer=0)


@pytest.mark.parametrize("name, kwargs", [
    ("gemm", {"sizes": [32]}),
    ("grouped_gemm", {"sizes": [32]}),
    ("memcpy", {"sizes": ["4K"]}),
    ("collective", {"sizes": ["1K"]}),
    ("ep_dispatch", {"sizes": [64]}),
])
def test_corrupted_payload_fails_the_check_and_writes_nothing(tmp_path, name, kwargs):
    path = tmp_path / "out.json"
    data = run_benchmark(name, backend="cpu", quick=True, json_path=path, corrupt=True, iters=1, warmup=0,
                         **kwargs)
    assert data["check"]["passed"] is False
    assert data["rows"] == []  # nothing wrong is timed
    assert not path.exists()  # a failed run leaves no file
    assert "# check: FAILED" in format_table(data)


def test_collective_corruption_counts_wrong_elements_per_op():
    data = run_benchmark("collective", backend="cpu", ranks=2, sizes=[64], corrupt=True, iters=1, warmup=0)
    assert data["check"]["wrong"] == len(COLLECTIVE_OPS)  # one damaged element per op, seen once


@pytest.fixture()
def results_file(tmp_path):
    data = run_benchmark("memcpy", backend="cpu", quick=True, sizes=["4K"], iters=1, warmup=0)
    path = tmp_path / "memcpy.json"
    write_results(path, data)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("check"), "check"),
    (lambda d: d.update(schema="moesim-bench/v0"), "schema"),
    (lambda d: d.update(benchmark="fft"), "benchmark"),
    (lambda d: d["device"].pop("backend"), "device.backend"),
    (lambda d: d["device"].update(backend="tpu"), "device.backend"),
    (lambda d: d["device"].update(gpus=-1), "device.gpus"),
    (lambda d: d.update(timestamp="2025-01-01T12:00:00+02:00"), "timestamp"),
    (lambda d: d.update(timestamp="yesterday"), "timestamp"),
    (lambda d: d["check"].pop("passed"), "check.passed"),
    (lambda d: d["rows"][0].pop("GBps"), "rows[0].GBps"),
    (lambda d: d["rows"][0].update(time_s=-1.0), "rows[0].time_s"),
    (lambda d: d["rows"][0].update(bytes="4K"), "rows[0].bytes"),
    (lambda d: d.update(rows={}), "rows"),
])
def test_malformed_results_name_the_field(results_file, mutate, field):
    path, data = results_file
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(MoesimError) as err:
        load_results(path)
    assert err.value.field == field
    assert field in str(err.value) and str(path) in str(err.value)


def test_results_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "moesim-bench/v1", ')
    with pytest.raises(MoesimError, match="not JSON"):
        load_results(path)


def test_write_results_refuses_a_bad_record_and_leaves_no_file(results_file, tmp_path):
    _, data = results_file
    data["rows"][0]["time_s"] = float("nan")
    target = tmp_path / "new" / "bad.json"
    with pytest.raises(MoesimError, match=r"rows\[0\]\.time_s"):
        write_results(target, data)
    assert not target.exists()


def test_bad_requests_are_one_line_errors():
    with pytest.raises(MoesimError, match="unknown benchmark"):
        run_benchmark("fft", backend="cpu")
    with pytest.raises(MoesimError, match="unknown backend"):
        run_benchmark("gemm", backend="rocm")
    with pytest.raises(MoesimError) as err:
        run_benchmark("collective", backend="cpu", ops=["broadcast"])
    assert err.value.field == "ops"
    with pytest.raises(MoesimError) as err:
        run_benchmark("gemm", backend="cpu", sizes=["big"])
    assert err.value.field == "sizes"
    with pytest.raises(MoesimError) as err:
        run_benchmark("ep_dispatch", backend="cpu", ranks=3, sizes=[8])  # 3 does not divide 256 experts
    assert err.value.field == "ranks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_raises_one_line():
    with pytest.raises(MoesimError) as err:
        run_benchmark("gemm", backend="cuda", quick=True)
    assert err.value.field == "backend" and "\n" not in str(err.value)


def test_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import moesim.bench.micro, moesim.bench.micro.run, moesim.bench.micro.results\n"
            "import moesim.bench.micro.gemm, moesim.bench.micro.memcpy, moesim.bench.micro.collectives\n"
            "import moesim.bench.micro.ep_dispatch\n"
            "from moesim.core.errors import MoesimError\n"
            "try:\n"
            "    moesim.bench.micro.run.run_benchmark('gemm', backend='cpu')\n"
            "except MoesimError as exc:\n"
            "    print(exc.field)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"


def test_format_table_has_fixed_columns():
    data = run_benchmark("memcpy", backend="cpu", sizes=["4K", "64K"], iters=1, warmup=0)
    lines = [line for line in format_table(data).splitlines() if not line.startswith("#")]
    assert len(lines) == 2 and len({len(line) for line in lines}) == 1
    assert np.isfinite([row["GBps"] for row in data["rows"]]).all()


TOPO = ("\x1b[4m\tGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\x1b[0m\n"
        "GPU0\t X \tNV18\tPIX\tSYS\t0-55\n"
        "GPU1\tNV18\t X \tNV18\tSYS\t0-55\n"
        "GPU2\tPIX\tNV18\t X \tSYS\t0-55\n")


@pytest.mark.parametrize("visible, link", [("0,1", "nvlink"), ("0,2", "pcie"), ("2,1", "nvlink"),
                                           ("GPU-abc,GPU-def", "unknown"), ("0", "unknown")])
def test_p2p_link_reads_nvidia_smi_topology(monkeypatch, visible, link):
    from moesim.bench.micro import memcpy

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(memcpy.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=TOPO, stderr=""))
    assert memcpy.p2p_link() == link


def test_cli_bench_micro_cpu_writes_checked_results(tmp_path):
    from click.testing import CliRunner

    from moesim.cli import main
    out = tmp_path / "coll.json"
    result = CliRunner().invoke(main, ["bench", "micro", "collective", "--backend", "cpu", "--quick", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "check: PASSED" in result.output and out.is_file()


def test_cli_bench_micro_cuda_without_gpu_is_one_line_error():
    from click.testing import CliRunner

    from moesim.bench.micro.run import cuda_available
    from moesim.cli import main
    if cuda_available():
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(main, ["bench", "micro", "gemm"])
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.strip()][0].startswith("error: backend:")
