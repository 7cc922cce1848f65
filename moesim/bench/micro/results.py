"""The results file of every microbenchmark (schema `moesim-bench/v1`): build, write, load, validate.

One schema for the PyTorch harness, the CUDA benchmarks and the calibration that reads both:

    {"schema": "moesim-bench/v1",
     "benchmark": "gemm" | "grouped_gemm" | "memcpy" | "collective" | "ep_dispatch",
     "device": {"name", "backend": "cuda" | "cpu", "torch", "cuda_runtime", "driver", "nccl",
                "gpus", "compute_capability"},
     "timestamp": ISO-8601 UTC, "host": str,
     "parameters": {...every knob of the run...},
     "rows": [{...ROW_FIELDS[benchmark], SI units in the key names...}],
     "check": {"passed": bool, ...}}

`device.torch` is None for a benchmark that does not use torch (the CUDA binaries);
`cuda_runtime`, `driver` and `compute_capability` are None on CPU; `nccl` is None when NCCL was
not used. Rows may carry more keys than ROW_FIELDS lists; readers rely only on those.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from moesim.core.errors import MoesimError
from moesim.core.output import write_atomic
from moesim.core.result import to_json

SCHEMA = "moesim-bench/v1"
BACKENDS = ("cuda", "cpu")

# Required row keys and their kinds: "int", "num" (finite, >= 0) or "str".
ROW_FIELDS: dict[str, dict[str, str]] = {
    "gemm": {"m": "int", "n": "int", "k": "int", "groups": "int", "dtype": "str", "time_s": "num",
             "tflops": "num"},
    "grouped_gemm": {"m": "int", "n": "int", "k": "int", "groups": "int", "dtype": "str",
                     "time_s": "num", "tflops": "num"},
    "memcpy": {"path": "str", "direction": "str", "engine": "str", "bytes": "int", "time_s": "num",
               "GBps": "num"},
    "collective": {"op": "str", "bytes": "int", "ranks": "int", "time_s": "num", "algbw_GBps": "num",
                   "busbw_GBps": "num"},
    "ep_dispatch": {"tokens_per_rank": "int", "hidden": "int", "topk": "int", "experts": "int",
                    "ranks": "int", "skew": "str", "dispatch_time_s": "num", "combine_time_s": "num",
                    "dispatch_bytes": "int", "combine_bytes": "int"},
}
BENCHMARKS = tuple(ROW_FIELDS)

# Device keys: kind, and whether None is allowed.
DEVICE_FIELDS: dict[str, tuple[str, bool]] = {
    "name": ("str", False), "backend": ("str", False), "torch": ("str", True),
    "cuda_runtime": ("str", True), "driver": ("str", True), "nccl": ("str", True),
    "gpus": ("int", False), "compute_capability": ("str", True),
}
TOP_FIELDS = ("schema", "benchmark", "device", "timestamp", "host", "parameters", "rows", "check")


def import_torch():
    """torch, or a one-line MoesimError saying how to install it (it is an optional dependency)."""
    try:
        import torch
    except ImportError:
        raise MoesimError("the microbenchmarks need PyTorch, which is not installed", field="torch",
                          fix="pip install 'moesim[bench]' (CPU), or the CUDA build of torch on a GPU machine") from None
    return torch


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _driver_version(torch) -> Optional[str]:
    """The NVIDIA driver release (e.g. '550.54.15'); the driver's CUDA API level if that is all we get."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            parts = word.split(".")
            if len(parts) >= 2 and all(p.isdigit() for p in parts):
                return word
    except OSError:
        pass
    try:
        api = int(torch._C._cuda_getDriverVersion())
        return f"cuda-api-{api // 1000}.{api % 1000 // 10}"
    except Exception:  # private API: absent in some builds
        return None


def device_info(backend: str, *, nccl: bool = False) -> dict:
    """The `device` record of this machine for `backend` ('cuda' or 'cpu'); `nccl`: NCCL was used."""
    torch = import_torch()
    if backend not in BACKENDS:
        raise MoesimError(f"unknown backend {backend!r}", field="backend", fix="use cuda or cpu")
    if backend == "cpu":
        return {"name": _cpu_name(), "backend": "cpu", "torch": torch.__version__, "cuda_runtime": None,
                "driver": None, "nccl": None, "gpus": 0, "compute_capability": None}
    if not torch.cuda.is_available():
        raise MoesimError("CUDA requested but torch.cuda.is_available() is False", field="backend",
                          fix="run on a GPU machine with the CUDA build of torch, or use --backend cpu")
    major, minor = torch.cuda.get_device_capability(0)
    nccl_version = None
    if nccl:
        version = torch.cuda.nccl.version()
        nccl_version = ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)
    return {"name": torch.cuda.get_device_name(0), "backend": "cuda", "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "driver": _driver_version(torch), "nccl": nccl_version,
            "gpus": int(torch.cuda.device_count()), "compute_capability": f"{major}.{minor}"}


def make_results(benchmark: str, device: dict, parameters: dict, rows: list[dict], check: dict) -> dict:
    """A complete results record, stamped with the time (UTC) and host."""
    data = {"schema": SCHEMA, "benchmark": benchmark, "device": device,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "parameters": parameters, "rows": rows, "check": check}
    validate_results(data)
    return data


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int) and value >= 0
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


_KIND_TEXT = {"str": "a string", "int": "a non-negative integer", "num": "a finite non-negative number"}


def validate_results(data: Any, *, file: Optional[str] = None) -> dict:
    """Check a results record against the schema; a MoesimError names the first bad field."""
    def fail(field: str, problem: str, fix: str) -> MoesimError:
        return MoesimError(problem, field=field, file=file, fix=fix)

    if not isinstance(data, dict):
        raise fail("(top level)", f"expected a JSON object, got {type(data).__name__}",
                   "write the file with moesim.bench.micro.results.write_results")
    for key in TOP_FIELDS:
        if key not in data:
            raise fail(key, "missing", f"a {SCHEMA} file has the keys {', '.join(TOP_FIELDS)}")
    if data["schema"] != SCHEMA:
        raise fail("schema", f"unknown schema {data['schema']!r}", f"expected {SCHEMA!r}")
    benchmark = data["benchmark"]
    if benchmark not in ROW_FIELDS:
        raise fail("benchmark", f"unknown benchmark {benchmark!r}", f"use one of {', '.join(BENCHMARKS)}")

    device = data["device"]
    if not isinstance(device, dict):
        raise fail("device", "expected an object", f"give {', '.join(DEVICE_FIELDS)}")
    for key, (kind, nullable) in DEVICE_FIELDS.items():
        if key not in device:
            raise fail(f"device.{key}", "missing", "record it (None where it does not apply)")
        value = device[key]
        if value is None and nullable:
            continue
        if not _kind_ok(value, kind):
            raise fail(f"device.{key}", f"{value!r} is not {_KIND_TEXT[kind]}",
                       "record it as " + _KIND_TEXT[kind] + (" or null" if nullable else ""))
    if device["backend"] not in BACKENDS:
        raise fail("device.backend", f"unknown backend {device['backend']!r}", "use cuda or cpu")

    stamp = data["timestamp"]
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
        raise fail("timestamp", f"{stamp!r} is not an ISO-8601 UTC time", "write e.g. 2025-01-31T12:00:00+00:00")
    if not isinstance(data["host"], str):
        raise fail("host", f"{data['host']!r} is not a string", "record the host name")
    if not isinstance(data["parameters"], dict):
        raise fail("parameters", "expected an object", "record every parameter of the run as key: value")

    check = data["check"]
    if not isinstance(check, dict) or not isinstance(check.get("passed"), bool):
        raise fail("check.passed", "missing or not true/false", "record whether the data check passed")

    rows = data["rows"]
    if not isinstance(rows, list):
        raise fail("rows", "expected a list", "one object per measured case")
    fields = ROW_FIELDS[benchmark]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise fail(f"rows[{i}]", "expected an object", f"give {', '.join(fields)}")
        for key, kind in fields.items():
            if key not in row:
                raise fail(f"rows[{i}].{key}", "missing", f"a {benchmark} row has {', '.join(fields)}")
            if not _kind_ok(row[key], kind):
                raise fail(f"rows[{i}].{key}", f"{row[key]!r} is not {_KIND_TEXT[kind]}",
                           f"record it as {_KIND_TEXT[kind]}")
    return data


def write_results(path: str | os.PathLike, data: dict) -> Path:
    """Validate, then write all-or-nothing (temporary file + rename): a bad record leaves no file."""
    validate_results(data)
    return write_atomic(path, to_json(data) + "\n")


def load_results(path: str | os.PathLike) -> dict:
    """Read and validate a results file; MoesimError naming the file and the bad field."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MoesimError(f"cannot read results file ({exc.strerror or exc})", file=name,
                          fix="give the path of a moesim bench --json output") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoesimError(f"not JSON (line {exc.lineno}: {exc.msg})", field="(top level)", file=name,
                          fix="re-run the benchmark; results files are written whole or not at all") from None
    return validate_results(data, file=name)
