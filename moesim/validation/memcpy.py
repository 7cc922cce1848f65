"""Predictions for `what: memcpy` cases: copy bandwidth from the specs, or from a calibration.

Without a profile every path is predicted at its spec rate (HBM bandwidth, PCIe / NVLink-C2C host
link, NVLink per direction; x2 for bidirectional), so no prediction reuses a measurement: the
GPU and system files also carry measured HBM and P2P figures, some from the same sources as these
cases, and using them here would be circular. With a calibration profile fitted on the case's GPU,
HBM uses its fitted memory efficiency and NVLink its fitted P2P bandwidth - the point of
calibrating. BabelStream's GB/s counts bytes read + written (copy/mul: 2 arrays, add/triad: 3,
dot: 2), which the HBM rate bounds the same way.
"""
from __future__ import annotations

from typing import Any

from moesim.specs.hardware import load_system
from moesim.validation.cases import Skip

USED = {"path", "direction", "engine", "op", "bytes"}



def predict_memcpy(case: Any, calibration: Any = None) -> tuple[float, list[str]]:
    if case.metric != "GBps":
        raise Skip(f"metric {case.metric!r} is not modelled for memcpy; only GBps")
    p = case.params
    system = load_system(case.system)
    gpu = system.gpu
    path = p.get("path")
    both = 2.0 if p.get("direction") == "bidirectional" else 1.0
    calibrated = calibration is not None and calibration.gpu == gpu.id
    if path == "hbm":
        rate = gpu.hbm_bandwidth_TBps.value * 1e3
        if calibrated and calibration.memory_efficiency is not None:
            rate *= calibration.memory_efficiency.value
        value = rate
    elif path in ("host_to_device", "device_to_host"):
        rate = gpu.host_link.per_direction_GBps.value
        if calibrated:
            fit = calibration.links.get(path)
            if fit is not None and fit.kind == "host":
                rate = fit.bandwidth_GBps.value
        value = rate * both
    elif path == "nvlink_p2p":
        rate = system.spec.scale_up.per_gpu_GBps_per_direction.value
        if calibrated:
            fit = next((lf for lf in calibration.links.values() if lf.kind == "nvlink"), None)
            if fit is not None:
                rate = fit.bandwidth_GBps.value
        value = rate * both
    else:
        raise Skip(f"memcpy path {path!r} is not modelled")
    return value, [k for k in p if k not in USED]
