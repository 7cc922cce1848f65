"""Microbenchmark results files (schema `moesim-bench/v1`): check, load and write them.

Every `moesim bench` run (PyTorch harness or CUDA benchmarks) writes one such file; calibration
reads only files whose correctness check passed, so a kernel that moved the wrong data never
calibrates anything.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from moesim.core.errors import MoesimError
from moesim.core.output import write_atomic
from moesim.costs.collectives import BUSBW_FACTOR
from moesim.specs import precision

SCHEMA = "moesim-bench/v1"
BENCHMARKS = ("gemm", "grouped_gemm", "memcpy", "collective", "ep_dispatch")
MEMCPY_PATHS = ("hbm", "host_to_device", "device_to_host", "nvlink_p2p", "pcie", "peer", "host")
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                "float8_e4m3fn": "fp8_e4m3",
                "float8_e4m3fnuz": "fp8_e4m3", "float8_e5m2": "fp8"}

def row_field(i: int, name: str) -> str:
    return f"rows[{i}].{name}"


def _number(row: dict, i: int, name: str, file: str, *, positive: bool = True, integer: bool = False,
            minimum: Optional[float] = None) -> float:
    if name not in row:
        raise MoesimError("required field is missing", file=file, field=row_field(i, name),
                          fix="re-run the benchmark with this moesim version, or add the field")
    value = row[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer and float(value) != int(value):
        ok = False
    if ok and positive and value <= 0:
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        need = "a whole number" if integer else "a number"
        need += f" >= {minimum:g}" if minimum is not None else (" > 0" if positive else "")
        raise MoesimError(f"must be {need}, got {value!r}", file=file, field=row_field(i, name),
                          fix="correct the row or re-run the benchmark")
    return float(value)


def _text(row: dict, i: int, name: str, file: str, choices: Optional[Iterable[str]] = None) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise MoesimError(f"must be a non-empty string, got {value!r}", file=file, field=row_field(i, name),
                          fix="correct the row or re-run the benchmark")
    if choices is not None and value not in choices:
        raise MoesimError(f"unknown value {value!r}", file=file, field=row_field(i, name),
                          fix=f"use one of: {', '.join(choices)}")
    return value


def canonical_dtype(name: str, *, file: Optional[str] = None, field: str = "dtype") -> str:
    """moesim's dtype name for a benchmark's dtype (`bfloat16`, `float8_e4m3fn` accepted as torch writes them)."""
    key = TORCH_DTYPES.get(name, name)
    if key not in precision.names():
        raise MoesimError(f"unknown dtype {name!r}", file=file, field=field,
                          fix=f"use one of: {', '.join(precision.names() + sorted(TORCH_DTYPES))}")
    return key


def dtype_family(name: str, *, file: Optional[str] = None, field: str = "dtype") -> str:
    family = precision.get(canonical_dtype(name, file=file, field=field)).family
    if family is None:
        raise MoesimError(f"{name} has no tensor-core GEMM peak", file=file, field=field,
                          fix="benchmark a tensor-core dtype: bf16, fp16, fp8, mxfp8, mxfp4, nvfp4")
    return family


def _check_row(benchmark: str, row: Any, i: int, file: str) -> None:
    if not isinstance(row, dict):
        raise MoesimError(f"a row must be a mapping, got {type(row).__name__}", file=file, field=f"rows[{i}]",
                          fix="write every row as an object of named columns")
    if benchmark in ("gemm", "grouped_gemm"):
        for name in ("m", "n", "k"):
            _number(row, i, name, file)
        if benchmark == "grouped_gemm" or "groups" in row:
            _number(row, i, "groups", file, integer=True, minimum=1)
        _text(row, i, "dtype", file)
        canonical_dtype(row["dtype"], file=file, field=row_field(i, "dtype"))
        _number(row, i, "time_s", file)
    elif benchmark == "memcpy":
        _text(row, i, "path", file, MEMCPY_PATHS)
        _number(row, i, "bytes", file)
        _number(row, i, "time_s", file)
        if row.get("direction") is not None:
            _text(row, i, "direction", file)
    elif benchmark == "collective":
        _text(row, i, "op", file, tuple(BUSBW_FACTOR))
        _number(row, i, "bytes", file)
        _number(row, i, "ranks", file, integer=True, minimum=2)
        _number(row, i, "time_s", file)
        if row.get("nodes") is not None:
            _number(row, i, "nodes", file, integer=True, minimum=1)


def check_result(data: Any, *, file: str) -> dict:
    """Validate one results file's content (the fields calibration uses); return it unchanged.

    A file whose `check.passed` is false is refused: its timings belong to a kernel that moved
    the wrong data.
    """
    if not isinstance(data, dict):
        raise MoesimError("expected a JSON object", file=file, field="(top level)",
                          fix=f"give a results file written by moesim bench (schema {SCHEMA})")
    if data.get("schema") != SCHEMA:
        raise MoesimError(f"schema is {data.get('schema')!r}, not {SCHEMA!r}", file=file, field="schema",
                          fix=f"give a results file written by moesim bench (schema {SCHEMA})")
    bench = data.get("benchmark")
    if bench not in BENCHMARKS:
        raise MoesimError(f"unknown benchmark {bench!r}", file=file, field="benchmark",
                          fix=f"use one of: {', '.join(BENCHMARKS)}")
    check = data.get("check")
    if not isinstance(check, dict) or not isinstance(check.get("passed"), bool):
        raise MoesimError("check.passed must be true or false", file=file, field="check.passed",
                          fix="give the result of the benchmark's correctness check")
    if not check["passed"]:
        raise MoesimError("the benchmark's correctness check failed (check.passed is false)", file=file,
                          field="check.passed", fix="fix the failure and re-run the benchmark; "
                                                     "wrong results are never used for calibration")
    device = data.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("name"), str) or not device["name"]:
        raise MoesimError("device.name must be the GPU's name", file=file, field="device.name",
                          fix="give the device block the benchmark writes (name, driver, CUDA, NCCL)")
    for name in ("timestamp", "host"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise MoesimError(f"{name} must be a string or null", file=file, field=name, fix="correct it")
    if data.get("parameters") is not None and not isinstance(data["parameters"], dict):
        raise MoesimError("parameters must be a mapping", file=file, field="parameters", fix="correct it")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise MoesimError("rows must be a list", file=file, field="rows", fix="give the benchmark's rows")
    for i, row in enumerate(rows):
        _check_row(bench, row, i, file)
    return data


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Read and validate results files (JSON, schema `moesim-bench/v1`).

    Each returned dict is the file's content plus `_file` (the path as given) and `_sha256`
    (of its bytes), which `fit_profile` carries into the provenance.
    """
    out = []
    for path in paths:
        file = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise MoesimError(f"cannot read file ({exc.strerror})", file=file, fix="check the path") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "(JSON)"
            raise MoesimError(f"malformed JSON: {exc}", file=file, field=where,
                              fix="give the JSON file written by moesim bench") from None
        check_result(data, file=file)
        out.append({**data, "_file": file, "_sha256": hashlib.sha256(raw).hexdigest()})
    if not out:
        raise MoesimError("no results files given", field="results", fix="give one or more RESULTS.json files")
    return out


def write_results(result: dict, path: str | Path) -> Path:
    """Write one results dict (e.g. from `synthetic_results`) as a results file, atomically."""
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    check_result(clean, file=str(path))
    return write_atomic(path, json.dumps(clean, indent=1) + "\n")
