"""Fit a calibration profile: efficiencies and link rates from microbenchmark results, by least squares.

The flow (DESIGN.md): `moesim bench` (GPU) writes results files (schema `moesim-bench/v1`) ->
`load_results` validates them -> `fit_profile` fits the constants moesim's forward models use ->
`write_profile` writes `topologies/calibration/<system>.yaml` with a `provenance:` block ->
`load_calibration` reads it back -> `apply_to_compute`, `apply_to_gpu` and
`link_efficiency_overrides` hand the fitted numbers to the compute and collective models.

What is fitted, each by least squares against moesim's own forward model (so the fitted number is
the one that makes moesim reproduce the measurement, not a number from a different definition):

* `matmul_peak_efficiency[family]` (GEMM and grouped-GEMM rows): moesim predicts every row with
  efficiency 1 (`compute.gemm_estimate` / `grouped_gemm_estimate`), which gives compute_i,
  memory_i and the launch cost L; the model time at efficiency e is max(compute_i / e, memory_i) + L.
  With x = 1/e the compute-bound rows are linear in x, and x minimises the squared relative error
  sum_i ((compute_i x + L - t_i) / t_i)^2 in closed form: x = sum a_i y_i / sum a_i^2 with
  a_i = compute_i / t_i, y_i = (t_i - L) / t_i. Which rows are compute-bound depends on x, so the
  fit repeats until that set is stable. A grouped-GEMM row's `m` is the rows of EACH group (all
  `groups` groups equal, as the harness and DeepGEMM's grouped benchmarks run them). Only large
  GEMMs (>= `LARGE_GEMM_FLOPS`) enter the fit: the efficiency is the large-GEMM fraction of peak
  by definition (compute.py), and small GEMMs
  are dominated by effects the model handles elsewhere (waves, launch). Every row still gets a
  residual, marked `used_in_fit`.
* `memory_efficiency` (memcpy rows with path `hbm`, a device-to-device copy of `bytes`): median
  HBM rate / HBM spec over the rows within 4x of the largest size (smaller copies measure launch
  cost and caches, not HBM). The HBM rate is 2 x bytes / time_s: a copy reads and writes every
  byte, and that is how the compute model counts memory traffic and how its reference figure
  (BabelStream Copy, `hbm_measured_TBps`) is defined. The row's GBps column is not used: the
  harness writes it as bytes copied / time (nvbandwidth's one-direction convention).
* Links (memcpy rows `nvlink_p2p`, `host_to_device`, `device_to_host`; the harness's names
  `peer` and `pcie` + direction `h2d` / `d2h` are read as these): time = alpha + bytes / beta,
  fitted with `np.linalg.lstsq` on the rows divided by
  their measured time (squared relative error, so small messages pin alpha and large ones beta).
  beta is the achievable bandwidth, alpha the latency; NVLink efficiency = beta / the system's
  spec per-direction NVLink rate, as `collectives.link_efficiency` defines it from a P2P
  measurement. Bidirectional rows are fitted and reported but give no efficiency.
* Collectives (rows grouped by op, ranks, nodes): time = alpha + bus_bytes / beta with bus_bytes
  = bytes x busbw factor (nccl-tests PERFORMANCE.md, `collectives.BUSBW_FACTOR`), so beta is the
  achievable bus bandwidth. Its efficiency is beta / the bus bandwidth moesim's collective model
  predicts for a large message at spec rate, on the link kind that binds there (nvlink, ib,
  roce; `nvls` for in-switch all-reduce).

Residuals are relative errors of predicted vs measured time, (predicted - measured) / measured.
Every fitted number carries `residual_rms` and `residual_max` (over the rows of its fit) and the
standard error of the fitted value; `error_band` turns an RMS into the +-band moesim reports on a
metric (k = 2, module constant `ERROR_BAND_K`).

Results files are checked by `calibration.results`; the profile record, its writing and its
use live in `calibration.profile`; `calibration.synthetic` generates results from known values.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import numpy as np

from moesim.calibration.profile import PROFILE_FORMAT, fitted_source, short_label, with_memory_efficiency
from moesim.calibration.results import canonical_dtype, check_result, row_field
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.costs.collectives import BUSBW_FACTOR, collective_time, link_efficiency
from moesim.costs.compute import (ComputeProfile, Fraction, MatmulPeakEfficiency, gemm_estimate, grouped_gemm_estimate,
                                  load_compute_profile)
from moesim.specs import precision
from moesim.specs.hardware import GPUSpec, System, gpu_names, load_gpu, load_system, system_names

HBM_COPY_TRAFFIC = 2.0  # bytes through HBM per byte copied device-to-device (read + write)
BIDIRECTIONAL = ("bidirectional", "bi", "both", "duplex")
LARGE_GEMM_FLOPS = 2.0 * 2048**3  # ~17 GFLOP: >= 20 us at 800 TFLOP/s, 15x a kernel launch
HBM_LARGE_FRACTION = 0.25  # hbm rows within 4x of the largest size set memory_efficiency
COLLECTIVE_PROBE_BYTES = float(2**32)  # "large message" for the model's spec bus bandwidth
LINK_KIND = {"nvlink_p2p": "nvlink", "host_to_device": "host", "device_to_host": "host", "peer_pcie": "pcie",
             "pcie": "host"}
DEVICE_FIELDS = ("name", "backend", "torch", "cuda_runtime", "driver", "nccl", "gpus", "compute_capability")


# ---------------------------------------------------------------- helpers

def _label(result: dict, index: int) -> str:
    return result.get("_file") or f"{result['benchmark']} results #{index} (in memory)"




def _unit_profile(gpu: GPUSpec, profile: ComputeProfile) -> ComputeProfile:
    """The profile with every matmul efficiency the GPU has tensor cores for set to 1."""
    eff = profile.matmul_peak_efficiency
    updates = {}
    for family in MatmulPeakEfficiency.model_fields:
        if gpu.peak_flops(family) is not None:
            updates[family] = Fraction(value=1.0, source="calibration: efficiency 1 (model time at dense peak)")
    return profile.model_copy(update={"matmul_peak_efficiency": eff.model_copy(update=updates)})




def _summary(rel: np.ndarray) -> tuple[float, float]:
    rel = np.asarray(rel, dtype=float)
    return float(np.sqrt(np.mean(rel**2))), float(np.max(np.abs(rel)))


def _fitted(value: float, rel: np.ndarray, files: list[str], *, stderr: Optional[float] = None,
            note: Optional[str] = None) -> dict:
    rms, worst = _summary(rel)
    out = {"value": float(value), "source": fitted_source(files), "residual_rms": rms, "residual_max": worst,
           "stderr": None if stderr is None or not math.isfinite(stderr) else float(stderr), "rows": int(len(rel))}
    if note:
        out["note"] = note
    return out




def _resid(quantity: str, file: str, i: int, label: str, measured: float, predicted: float, used: bool) -> dict:
    return {"quantity": quantity, "file": short_label(file), "row": i, "label": label, "measured_s": float(measured),
            "predicted_s": float(predicted), "rel_error": float((predicted - measured) / measured),
            "used_in_fit": bool(used)}


def _rows(results: list[dict], benchmark: str):
    for r_index, result in enumerate(results):
        if result["benchmark"] == benchmark:
            for i, row in enumerate(result["rows"]):
                yield _label(result, r_index), i, row


def _link_path(row: dict, parameters: dict) -> Optional[str]:
    """The link a memcpy row measures: nvlink_p2p, host_to_device, device_to_host, hbm; the
    harness's `peer` is nvlink_p2p where peer access was available (else `peer_pcie`), `pcie`
    with direction h2d / d2h is host_to_device / device_to_host; `host` (CPU memcpy) is None."""
    path, direction = row["path"], row.get("direction")
    if path == "peer":
        return "peer_pcie" if parameters.get("peer_access") is False else "nvlink_p2p"
    if path == "pcie":
        return {"h2d": "host_to_device", "d2h": "device_to_host"}.get(direction, "pcie")
    if path == "host":
        return None
    return path


def _memcpy_rows(results: list[dict]):
    """(file, row index, row, link path) of every memcpy row that measures a GPU link or HBM."""
    for r_index, result in enumerate(results):
        if result["benchmark"] == "memcpy":
            for i, row in enumerate(result["rows"]):
                path = _link_path(row, result.get("parameters") or {})
                if path is not None:
                    yield _label(result, r_index), i, row, path


# ---------------------------------------------------------------- fits

def fit_alpha_beta(nbytes: np.ndarray, time_s: np.ndarray) -> tuple[float, float, np.ndarray, tuple, str | None]:
    """time = alpha + nbytes / beta by least squares on relative error (rows divided by time).

    Returns (alpha_s, beta_Bps, relative residuals, (stderr alpha, stderr beta), note). A negative
    alpha (noise on latency-free data) is refitted as alpha = 0; one distinct size fits beta only.
    """
    s, t = np.asarray(nbytes, dtype=float), np.asarray(time_s, dtype=float)
    note = None
    if len(np.unique(s)) >= 2:
        design = np.stack([1.0 / t, s / t], axis=1)
        coef, *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        alpha, inv_beta = float(coef[0]), float(coef[1])
        if alpha < 0:
            note = f"fitted latency was negative ({alpha:.3g} s); refitted with latency 0"
        else:
            dof = max(len(t) - 2, 1)
            resid = design @ coef - 1.0
            cov = (resid @ resid / dof) * np.linalg.pinv(design.T @ design)
            se_alpha, se_inv = math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0))
            beta = 1.0 / inv_beta
            return alpha, beta, (alpha + s / beta - t) / t, (se_alpha, se_inv * beta**2), None
    else:
        note = "one message size only: latency not separable, fitted as 0"
    a = s / t
    inv_beta = float(a.sum() / (a @ a))
    resid = a * inv_beta - 1.0
    se_inv = math.sqrt((resid @ resid) / max(len(t) - 1, 1) / (a @ a))
    beta = 1.0 / inv_beta
    return 0.0, beta, resid, (None, se_inv * beta**2), note


def _fit_inverse_efficiency(compute: np.ndarray, memory: np.ndarray, launch: float, t: np.ndarray,
                            candidates: np.ndarray) -> tuple[float, np.ndarray, float]:
    """x = 1/e minimising the squared relative error of max(compute x, memory) + launch over the
    candidate rows that are compute-bound at x (active set, repeated until stable).
    Returns (x, mask of rows in the fit, stderr of x)."""
    active = candidates & (compute >= memory)
    if not active.any():
        active = candidates.copy()
    x = 1.0
    for _ in range(50):
        a = compute[active] / t[active]
        y = (t[active] - launch) / t[active]
        x = float(a @ y / (a @ a))
        new = candidates & (compute * x >= memory)
        if not new.any() or np.array_equal(new, active):
            break
        active = new
    a = compute[active] / t[active]
    r = a * x - (t[active] - launch) / t[active]
    se = math.sqrt((r @ r) / max(active.sum() - 1, 1) / (a @ a))
    return x, active, se


def _fit_gemm(results: list[dict], gpu: GPUSpec, profile: ComputeProfile, *, large_gemm_flops: float):
    unit = _unit_profile(gpu, profile)
    by_family: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for bench in ("gemm", "grouped_gemm"):
        for file, i, row in _rows(results, bench):
            dtype = canonical_dtype(row["dtype"], file=file, field=row_field(i, "dtype"))
            family = precision.get(dtype).family
            if family is None:
                key = f"{short_label(file)}: {dtype} GEMM rows not fitted (no tensor-core peak for {dtype})"
                skipped[key] = skipped.get(key, 0) + 1
                continue
            groups = int(row.get("groups", 1))
            m, n, k = float(row["m"]), float(row["n"]), float(row["k"])
            try:
                if bench == "grouped_gemm":
                    est = grouped_gemm_estimate(gpu, unit, np.full(groups, m), n, k, dtype)
                else:
                    est = gemm_estimate(gpu, unit, m, n, k, dtype)
            except MoesimError as exc:
                raise exc.located(file=file, field_prefix=f"rows[{i}]") from None
            label = f"{bench} {dtype} m={m:g} n={n:g} k={k:g}" + (f" groups={groups}" if bench == "grouped_gemm" else "")
            if row.get("impl"):
                label += f" impl={row['impl']}"
            shape = (file, bench, dtype, groups, m, n, k)
            by_family.setdefault(family, []).append((file, i, label, est, float(row["time_s"]), shape))
    fits, residuals = {}, []
    for family, items in sorted(by_family.items()):
        compute = np.array([it[3].compute_s for it in items])
        memory = np.array([it[3].memory_s for it in items])
        flops = np.array([it[3].flops for it in items])
        t = np.array([it[4] for it in items])
        launch = profile.kernel_launch_s.value
        # One shape timed with several implementations (cuBLASLt per-expert loop and cuBLAS's
        # grouped API, which runs at ~40 % of the loop on an H100): a framework runs the fastest,
        # so only the fastest row of each shape in a file is fitted; the others stay as residuals.
        fastest: dict[tuple, float] = {}
        for it in items:
            fastest[it[5]] = min(fastest.get(it[5], math.inf), it[4])
        is_fastest = np.array([it[4] <= fastest[it[5]] for it in items])
        candidates = (flops >= large_gemm_flops) & is_fastest
        note = None
        if not candidates.any():
            candidates = is_fastest
            note = f"no GEMM of >= {large_gemm_flops:.3g} FLOPs; fitted on all {int(is_fastest.sum())} rows"
        x, used, se_x = _fit_inverse_efficiency(compute, memory, launch, t, candidates)
        predicted = np.maximum(compute * x, memory) + launch
        rel = (predicted - t) / t
        efficiency = 1.0 / x
        if efficiency > 1:
            note = ((note + "; ") if note else "") + \
                f"fitted efficiency {efficiency:.3f} exceeds 1: check dense_TFLOPs.{family} of the GPU file"
        files = [items[j][0] for j in np.nonzero(used)[0]]
        fits[family] = _fitted(efficiency, rel[used], files, stderr=se_x / x**2, note=note)
        residuals += [_resid(f"matmul_peak_efficiency.{family}", it[0], it[1], it[2], it[4], p, u)
                      for it, p, u in zip(items, predicted, used)]
    return fits, residuals, [f"{k} x{v}" for k, v in skipped.items()]


def _fit_hbm(results: list[dict], gpu: GPUSpec):
    rows = [(file, i, row) for file, i, row, path in _memcpy_rows(results) if path == "hbm"]
    if not rows:
        return None, []
    nbytes = np.array([float(r["bytes"]) for _, _, r in rows])
    t = np.array([float(r["time_s"]) for _, _, r in rows])
    gbps = HBM_COPY_TRAFFIC * nbytes / t / units.GBps
    used = nbytes >= HBM_LARGE_FRACTION * nbytes.max()
    median = float(np.median(gbps[used]))
    spec_GBps = gpu.hbm_bandwidth_TBps.value * units.TBps / units.GBps
    # predicted time of a row at the median rate: bytes moved / rate, i.e. t x GBps / median
    predicted = t * gbps / median
    rel = (predicted - t) / t
    spread = np.std(gbps[used] / median, ddof=1) if used.sum() > 1 else float("nan")
    stderr = 1.2533 * spread / math.sqrt(used.sum()) * median / spec_GBps
    files = [rows[j][0] for j in np.nonzero(used)[0]]
    note = f"median {median:.1f} GB/s (2 x bytes copied / time: read + write) / spec {spec_GBps:g} GB/s"
    fit = _fitted(median / spec_GBps, rel[used], files, stderr=stderr, note=note)
    residuals = [_resid("memory_efficiency", f, i, f"hbm {r['bytes']:.4g} B", tt, p, u)
                 for (f, i, r), tt, p, u in zip(rows, t, predicted, used)]
    return fit, residuals


def _fit_links(results: list[dict], gpu: GPUSpec, system: Optional[System]):
    groups: dict[tuple, list] = {}
    for file, i, row, path in _memcpy_rows(results):
        if path == "hbm":
            continue
        key = (path, "bidirectional" if row.get("direction") in BIDIRECTIONAL else None)
        groups.setdefault(key, []).append((file, i, row))
    fits, residuals = {}, []
    for (path, direction), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        nbytes = np.array([float(r["bytes"]) for _, _, r in rows])
        t = np.array([float(r["time_s"]) for _, _, r in rows])
        alpha, beta, rel, (se_a, se_b), note = fit_alpha_beta(nbytes, t)
        files = [f for f, _, _ in rows]
        name = path if direction is None else f"{path}.{direction}"
        kind = LINK_KIND[path]
        if path == "nvlink_p2p":
            spec = (system.spec.scale_up.per_gpu_GBps_per_direction.value if system is not None
                    else gpu.nvlink.per_direction_GBps.value)
        elif kind == "host":
            spec = gpu.host_link.per_direction_GBps.value
        else:
            spec = None
        beta_GBps = beta / units.GBps
        fit = {"path": path, "direction": direction, "kind": kind, "spec_GBps": spec,
               "bandwidth_GBps": _fitted(beta_GBps, rel, files, stderr=se_b / units.GBps, note=note),
               "latency_s": _fitted(alpha, rel, files, stderr=se_a, note=note)}
        if direction is None and spec is not None:
            fit["efficiency"] = _fitted(beta_GBps / spec, rel, files, stderr=se_b / units.GBps / spec,
                                        note=f"{beta_GBps:.1f} GB/s / spec {spec:g} GB/s per direction")
        fits[name] = fit
        residuals += [_resid(f"links.{name}", f, i, f"{r['path']} {r.get('direction')} {r['bytes']:.4g} B", tt,
                             alpha + s / beta, True)
                      for (f, i, r), s, tt in zip(rows, nbytes, t)]
    return fits, residuals


def _spec_busbw(system: System, op: str, ranks: int, nodes: Optional[int]) -> tuple[Optional[float], Optional[str]]:
    """Bus bandwidth (GB/s) moesim's collective model gives a large message at spec link rates,
    and the link kind that binds; (None, None) where the system cannot host the collective."""
    if nodes is None or (nodes == 1 and ranks <= system.gpus_per_node):
        gpus, members = ranks, None
    elif ranks % nodes or ranks // nodes > system.gpus_per_node:
        return None, None
    else:
        per = ranks // nodes
        gpus = nodes * system.gpus_per_node
        members = [h * system.gpus_per_node + j for h in range(nodes) for j in range(per)]
    try:
        timing = collective_time(system.id, gpus, op, COLLECTIVE_PROBE_BYTES, participants=members)
    except MoesimError:
        return None, None
    if timing.bandwidth_s <= 0:
        return None, None
    eff, _ = link_efficiency(system)
    kind = timing.bottleneck_kind
    busbw = COLLECTIVE_PROBE_BYTES * BUSBW_FACTOR[op](ranks) / timing.bandwidth_s
    return busbw / eff.get(kind, 1.0) / units.GBps, kind  # capacities there are spec x eff


def _fit_collectives(results: list[dict], system: Optional[System]):
    groups: dict[tuple, list] = {}
    for file, i, row in _rows(results, "collective"):
        nodes = None if row.get("nodes") is None else int(row["nodes"])
        groups.setdefault((row["op"], int(row["ranks"]), nodes), []).append((file, i, row))
    fits, residuals = {}, []
    for (op, ranks, nodes), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        factor = BUSBW_FACTOR[op](ranks)
        bus = np.array([float(r["bytes"]) * factor for _, _, r in rows])
        t = np.array([float(r["time_s"]) for _, _, r in rows])
        alpha, beta, rel, (se_a, se_b), note = fit_alpha_beta(bus, t)
        files = [f for f, _, _ in rows]
        name = f"{op}.r{ranks}" + (f".n{nodes}" if nodes is not None else "")
        beta_GBps = beta / units.GBps
        fit = {"op": op, "ranks": ranks, "nodes": nodes,
               "busbw_GBps": _fitted(beta_GBps, rel, files, stderr=se_b / units.GBps, note=note),
               "latency_s": _fitted(alpha, rel, files, stderr=se_a, note=note)}
        if system is not None:
            spec, kind = _spec_busbw(system, op, ranks, nodes)
            if spec is not None:
                fit.update(bottleneck_kind=kind, spec_busbw_GBps=spec)
                fit["efficiency"] = _fitted(beta_GBps / spec, rel, files, stderr=se_b / units.GBps / spec,
                                            note=f"busbw {beta_GBps:.1f} GB/s / moesim's spec-rate busbw "
                                                 f"{spec:.1f} GB/s ({kind} binds)")
        fits[name] = fit
        residuals += [_resid(f"collectives.{name}", f, i, f"{op} {r['bytes']:.4g} B x{ranks}", tt, alpha + s / beta, True)
                      for (f, i, r), s, tt in zip(rows, bus, t)]
    return fits, residuals


def _device_summary(results: list[dict]) -> dict:
    names = sorted({r["device"]["name"] for r in results})
    if len(names) > 1:
        raise MoesimError(f"results come from different devices: {', '.join(names)}", field="device.name",
                          fix="calibrate one GPU model at a time")
    merged: dict[str, Any] = {}
    for key in DEVICE_FIELDS:
        values = []
        for r in results:
            v = r["device"].get(key)
            if v is not None and v not in values:
                values.append(v)
        merged[key] = None if not values else values[0] if len(values) == 1 else values
    return merged


def infer_ids(results: list[dict], *, gpu_id: Optional[str] = None,
              system_id: Optional[str] = None) -> tuple[str, Optional[str]]:
    """GPU and system ids for a calibration: given ones win; else the GPU from device.name
    (`synthetic (<gpu>)`, or the product name such as `NVIDIA H100 80GB HBM3`) and the one
    system built from that GPU."""
    if system_id is not None and gpu_id is None:
        gpu_id = load_system(system_id).spec.gpu
    if gpu_id is None:
        name = _device_summary(results)["name"]
        match = re.fullmatch(r"synthetic \((.+)\)", name)
        if match:
            gpu_id = match.group(1)
        else:
            tokens = {"GB200": "gb200", "B200": "b200-sxm", "H200": "h200-sxm", "H800": "h800-sxm", "H100": "h100-sxm"}
            found = [gid for tok, gid in tokens.items()
                     if re.search(rf"\b{tok}\b", name) and not re.search(r"PCIe|\bNVL\b", name, re.I)]
            if len(found) != 1:
                raise MoesimError(f"cannot tell the GPU model from device name {name!r}", field="gpu",
                                  fix=f"give --gpu, one of: {', '.join(gpu_names())}")
            gpu_id = found[0]
    if system_id is None:
        matches = [s for s in system_names() if load_system(s).spec.gpu == gpu_id]
        system_id = matches[0] if len(matches) == 1 else None
    return gpu_id, system_id


def fit_profile(results: list[dict], *, gpu_id: str, system_id: Optional[str] = None,
                large_gemm_flops: float = LARGE_GEMM_FLOPS) -> dict:
    """Fit a calibration profile (plain dict, the YAML `write_profile` writes less `provenance`).

    `results` are results dicts (from `load_results` or `synthetic_results`); `gpu_id` names
    `topologies/gpus/<gpu>.yaml` and the compute profile the GEMM model uses, `system_id` the
    system whose spec link rates the link efficiencies are relative to (None: GPU NVLink spec,
    and no collective efficiencies). See the module docstring for every fit.
    """
    for index, result in enumerate(results):
        check_result(result, file=_label(result, index))
    if not results:
        raise MoesimError("no results to fit", field="results", fix="give one or more results files")
    gpu = load_gpu(gpu_id)
    profile = load_compute_profile(gpu_id)
    system = None
    if system_id is not None:
        system = load_system(system_id)
        if system.spec.gpu != gpu.id:
            raise MoesimError(f"system {system_id} is built from {system.spec.gpu}, not {gpu.id}", field="system",
                              fix=f"give the system of the benchmarked GPU, or --gpu {system.spec.gpu}")
    device = _device_summary(results)
    for index, result in enumerate(results):
        if result["device"].get("backend") == "cpu":
            raise MoesimError("these results were measured on a CPU (device.backend: cpu)", file=_label(result, index),
                              field="device.backend", fix="calibrate a GPU from results of moesim bench on that GPU")
    memory, mem_resid = _fit_hbm(results, gpu)
    model_gpu = gpu if memory is None else with_memory_efficiency(gpu, memory["value"], memory["source"])
    matmul, gemm_resid, notes = _fit_gemm(results, model_gpu, profile, large_gemm_flops=large_gemm_flops)
    links, link_resid = _fit_links(results, gpu, system)
    colls, coll_resid = _fit_collectives(results, system)
    if not (matmul or memory or links or colls):
        raise MoesimError("no row of these results can be fitted (ep_dispatch rows are validation data only)",
                          field="rows", fix="give gemm, grouped_gemm, memcpy or collective results")
    inputs = [{"file": _label(r, i), "sha256": r.get("_sha256"), "benchmark": r["benchmark"],
               "timestamp": r.get("timestamp"), "host": r.get("host"), "parameters": r.get("parameters") or {}}
              for i, r in enumerate(results)]
    return {"format": PROFILE_FORMAT, "gpu": gpu.id, "system": system_id, "device": device, "inputs": inputs,
            "matmul_peak_efficiency": matmul, "memory_efficiency": memory, "links": links, "collectives": colls,
            "notes": notes, "residuals": mem_resid + gemm_resid + link_resid + coll_resid}
