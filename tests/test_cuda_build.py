"""The CUDA microbenchmarks (bench/cuda/) build with nvcc, answer --help and, with no GPU, say so.

The binaries are built into pytest's tmp_path (`make -C bench BUILD=...`), so the repository stays
clean. Skipped when nvcc is not on PATH; gemm_bench is skipped when no cuBLAS (headers and
libraries) is found (bench/find_cublas.py: the CUDA toolkit, /usr, or the `nvidia-cublas` wheel).
The no-GPU test runs only where no CUDA device is visible; on a GPU machine the binaries would
measure instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
BINARIES = ("gemm_bench", "memcpy_bench")
NO_DEVICE_EXIT = 3  # common.h kExitNoDevice
USAGE_EXIT = 2

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def _cublas_found() -> bool:
    out = subprocess.run([sys.executable, str(BENCH / "find_cublas.py")], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def _gpu_visible() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("bench-build")
    targets = ["all"] if _cublas_found() else ["memcpy"]
    proc = subprocess.run(["make", "-C", str(BENCH), f"BUILD={build}", f"PYTHON={sys.executable}", *targets],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"make failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return build


def _binary(build_dir: Path, name: str) -> Path:
    path = build_dir / name
    if name == "gemm_bench" and not path.exists() and not _cublas_found():
        pytest.skip("cuBLAS not found (pip install 'nvidia-cublas==13.1.1.3', or a toolkit with cuBLAS)")
    return path


@pytest.mark.parametrize("name", BINARIES)
def test_binary_built(build_dir, name):
    path = _binary(build_dir, name)
    assert path.is_file() and os.access(path, os.X_OK), f"{path} was not built"


@pytest.mark.parametrize("name", BINARIES)
def test_help_needs_no_gpu(build_dir, name):
    proc = subprocess.run([str(_binary(build_dir, name)), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name}")
    assert "--json FILE" in proc.stdout and "exit status" in proc.stdout


@pytest.mark.parametrize("name", BINARIES)
def test_bad_option_is_usage_error(build_dir, name):
    proc = subprocess.run([str(_binary(build_dir, name)), "--no-such-option"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == USAGE_EXIT
    assert "unknown option" in proc.stderr


@pytest.mark.skipif(_gpu_visible(), reason="a GPU driver is present: the binaries would measure, not fail")
@pytest.mark.parametrize("name", BINARIES)
def test_no_gpu_path(build_dir, name, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([str(_binary(build_dir, name)), "--json", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == NO_DEVICE_EXIT, (proc.returncode, proc.stdout, proc.stderr)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: no CUDA device found")
    assert not out.exists(), "nothing measured, so no results file"
