"""Copy cases (BabelStream HBM, nvbandwidth / p2p tests) as fit targets.

Why this shape: a copy's rate is the spec rate of the one link it crosses times an efficiency that
belongs to the link class and the GPU architecture, and to the way the copy is issued: HBM
streams pay more for written than for read bytes (BabelStream ops differ only in that mix),
host links differ by class (PCIe vs NVLink-C2C, where two GB200 GPUs share one Grace port),
NVLink peer copies lose some rate when both directions run and when SM kernels rather than the
copy engine issue them. Formula and sources: `topologies/kernels/copy.yaml`; byte counts and
link sharing: `topologies/kernels/tables/copy.yaml`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from moesim.calibration.kernel_fit import Target
from moesim.core.loader import data_root, read_yaml
from moesim.specs.hardware import load_system
from moesim.validation.cases import Case, Skip
from moesim.validation.targets import group_of

USED = {"path", "direction", "engine", "op", "bytes", "tool"}


@lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    data, _ = read_yaml(data_root() / "topologies" / "kernels" / "tables" / "copy.yaml")
    return data


def _hbm(case: Case, gpu) -> tuple[float, Any]:
    op = case.params.get("op") or "babelstream_copy"
    counts = tables()["babelstream"].get(op)
    if counts is None:
        raise Skip(f"HBM op {op!r} has no byte count (known: {', '.join(tables()['babelstream'])})")
    spec = gpu.hbm_bandwidth_TBps.value * 1e3
    arch = gpu.arch.value
    r, w = float(counts["read"]), float(counts["write"])
    return spec, lambda v: spec * v[f"copy.hbm_eff.{arch}"] * (r + w) / (r + v["copy.hbm_write_cost"] * w)


def _host(case: Case, gpu) -> tuple[float, Any]:
    link = gpu.host_link
    share = tables()["host_link_sharing"].get(gpu.id, {}).get("gpus", 1)
    kind = "pcie" if link.generation.value is not None else "c2c"  # gpus/*.yaml: C2C has no PCIe generation
    spec = link.per_direction_GBps.value / share
    both = 2.0 if case.params.get("direction") == "bidirectional" else 1.0
    return spec * both, lambda v: spec * both * v[f"copy.host_eff.{kind}"]


def _nvlink(case: Case, system) -> tuple[float, Any]:
    spec = system.spec.scale_up.per_gpu_GBps_per_direction.value
    arch = system.gpu.arch.value
    bidir = case.params.get("direction") == "bidirectional"
    engine = case.params.get("engine")
    if engine not in ("sm", "copy_engine"):
        raise Skip(f"copy engine not stated (engine={engine!r}): SM and copy-engine copies differ")
    sm = engine == "sm"
    both = 2.0 if bidir else 1.0

    def model(v):
        rate = spec * both * v[f"copy.nvlink_eff.{arch}"]
        if bidir:
            rate *= v["copy.bidir_eff"]
        if sm:
            rate *= v[f"copy.sm_eff.{arch}"]
        return rate
    return spec * both, model


def prepare(case: Case, calibration=None) -> Target:
    """The copy model's target; with a microbenchmark profile measured on the case's GPU
    (`validate --profile`), that measurement's rate instead (a measured rate of this very GPU
    beats a rate fitted across published cases)."""
    if case.metric != "GBps":
        raise Skip(f"metric {case.metric!r} is not modelled for memcpy; only GBps")
    system = load_system(case.system)
    if calibration is not None and calibration.profile.gpu == system.gpu.id:
        from moesim.validation.memcpy import predict_memcpy
        from moesim.validation.targets import constant
        value, ignored = predict_memcpy(case, calibration.profile)
        return constant(case, value, ignored)
    path = case.params.get("path")
    if path == "hbm":
        _, model = _hbm(case, system.gpu)
    elif path in ("host_to_device", "device_to_host"):
        _, model = _host(case, system.gpu)
    elif path == "nvlink_p2p":
        _, model = _nvlink(case, system)
    else:
        raise Skip(f"memcpy path {path!r} is not modelled")
    ignored = [k for k in case.params if k not in USED]
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured,
                  group=group_of(case), model=model, ignored=ignored)
