"""Collective cases (nccl-tests) as fit targets: NCCL's latency/protocol model plus fitted link efficiencies.

Why this shape: nccl-tests times small messages by NCCL's per-step latencies and the protocol it
picks (LL / LL128 / Simple, NVLS Simple), host launch cost in `-g N` mode, and large ones by the
achieved rate of the binding link class (NVLink per arch, NVLS switch reduction per arch, IB NIC).
Everything parameter-free is done once per case: the algorithm (the case's own where its id or
notes force one, else NCCL's pick under this model at the sourced defaults), the protocol (NCCL's
pick likewise), NCCL's latency, and the time of moesim's ring / all-to-all plan with only NVLink,
or only the network, limiting at spec rates. The target's closure is a few multiplications.
The model itself is `costs.collective_kernels` (the simulator's too); formula and sources:
`topologies/kernels/collective.yaml`.
"""
from __future__ import annotations

import re
from typing import Mapping

from moesim.calibration.kernel_fit import Target
from moesim.calibration.kernel_params import definitions
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.costs import collective_kernels as ck
from moesim.costs import nccl_tuning as nt
from moesim.costs.collectives import ALGORITHMS, BUSBW_FACTOR
from moesim.specs.hardware import load_system
from moesim.validation.cases import Case, Skip
from moesim.validation.targets import group_of

METRICS = ("busbw_GBps", "algbw_GBps", "time_us")
USED = {"op", "bytes", "nodes"}


def forced_algorithm(case: Case) -> str | None:
    """The algorithm a case states (id first, then NCCL_ALGO in its notes); None: NCCL's choice."""
    text = case.id.lower()
    notes = (getattr(case, "notes", None) or "").lower()
    if "collnet" in text or "sharp" in text:
        return "collnet"
    if re.search(r"(^|-)nvls(-|$)", text):
        return "nvls"
    if re.search(r"(^|-)ring(-|$)", text) or "nccl_algo=ring" in notes:
        return "ring"
    if "nccl_algo=nvls" in notes:
        return "nvls"
    return None


def prepare(case: Case, calibration=None) -> Target:
    p = case.params
    op = p.get("op")
    if op not in ALGORITHMS or op == "send_recv":
        raise Skip(f"unknown collective op {op!r}")
    if case.metric not in METRICS:
        raise Skip(f"unknown metric {case.metric!r} for a collective")
    size = float(p["bytes"])
    if not size > 0:
        raise Skip(f"bytes must be positive, got {p['bytes']!r}")
    n = int(case.gpus)
    if n < 2:
        raise Skip("a collective needs at least 2 GPUs")
    system = load_system(case.system)
    defaults = {k: d.value for k, d in definitions().items()}
    try:  # the choice is parameter-free: NCCL's pick at the sourced defaults
        choice = ck.choose(system, n, op, size, defaults, forced_algorithm(case))
    except MoesimError as exc:
        raise Skip(exc.problem) from None
    algo, proto, gpu_model = choice.algo, choice.protocol, choice.gpu_us
    launches = nt.gpus_per_launch(case.source, min(n, system.gpus_per_node))
    factor = BUSBW_FACTOR[op](n)
    metric = case.metric

    def predict(v: Mapping[str, float]) -> float:
        t_us = max(gpu_model(v), launches * v["collective.launch_us"])
        if metric == "time_us":
            return t_us
        algbw = size / (t_us * units.us) / units.GBps
        return algbw * factor if metric == "busbw_GBps" else algbw

    ignored = [k for k in p if k not in USED]
    target = Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured,
                    group=group_of(case), model=predict, ignored=ignored)
    target.algo, target.protocol, target.launches = algo, proto, launches  # for tests and reports
    return target
