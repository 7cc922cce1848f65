"""`moesim validate`: predict each published measurement and report the signed error.

Reads a cases file in the schema of the open validation set (SCHEMA.md there): every case names
what was measured, on which system and GPU count, with which parameters. A predictor per `what`
turns the case into a moesim prediction from specs, profiles and models only; nothing here is
fitted to a case. A case moesim cannot model yet is skipped with the reason, never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from pydantic import ConfigDict

from moesim.core import units
from moesim.validation import compute as validation_compute
from moesim.validation import memcpy as validation_memcpy
from moesim.validation import memory as validation_memory
from moesim.costs.collectives import ALGORITHMS, build_fabric, collective_time, ep_exchange_time, flows_time
from moesim.core.errors import MoesimError
from moesim.specs.hardware import load_system, system_names
from moesim.kernels import routing as routing_kernels
from moesim.kernels import traffic as traffic_kernels
from moesim.core.loader import Record, parse_record, read_yaml
from moesim.specs.model import model_names


class Case(Record):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    what: str
    system: str
    gpus: Optional[int] = None
    params: dict[str, Any] = {}
    metric: str
    measured: float
    source: str


class CasesFile(Record):
    model_config = ConfigDict(extra="allow", frozen=True)
    cases: list[Case]


class Skip(Exception):
    """This case cannot be modelled yet; the message says why."""


def load_cases(path: str) -> list[Case]:
    data, node = read_yaml(Path(path))
    return parse_record(CasesFile, data, file=path, node=node).cases


# ---------------------------------------------------------------- collectives
COLLECTIVE_METRICS = {"busbw_GBps", "algbw_GBps", "time_us"}


@dataclass(frozen=True)
class Calibrated:
    """A calibration profile and the file it came from (scenarios name the file)."""

    path: str
    profile: Any


def _links(calibration: Optional[Calibrated], system_id: str) -> tuple:
    """Calibrated link efficiencies when the profile belongs to this system's GPU."""
    if calibration is None:
        return ()
    from moesim.calibration.fit import link_efficiency_overrides
    if load_system(system_id).gpu.id != calibration.profile.gpu:
        return ()
    return tuple(sorted(link_efficiency_overrides(calibration.profile).items()))


def _profile_override(calibration: Optional[Calibrated], system_id: str) -> dict:
    if calibration is None or load_system(system_id).gpu.id != calibration.profile.gpu:
        return {}
    return {"runtime.profile": calibration.path}


def predict_collective(case: Case, calibration=None) -> tuple[float, list[str]]:
    p = case.params
    op = p.get("op")
    if op not in ALGORITHMS:
        raise Skip(f"unknown collective op {op!r}")
    if case.metric not in COLLECTIVE_METRICS:
        raise Skip(f"unknown metric {case.metric!r} for a collective")
    timing = collective_time(case.system, case.gpus, op, float(p["bytes"]),
                             link_overrides=_links(calibration, case.system))
    value = {"busbw_GBps": timing.busbw_GBps, "algbw_GBps": timing.algbw_GBps,
             "time_us": timing.time_s / units.us}[case.metric]
    ignored = [k for k in p if k not in ("op", "bytes")]
    return value, ignored


# ---------------------------------------------------------------- EP dispatch / combine
EP_USED = {"tokens_per_gpu", "hidden", "topk", "experts", "experts_per_gpu", "dtype", "mode", "bottleneck",
           "expert_groups", "topk_groups_effective", "group_limited", "routing", "nodes", "gpus_per_node"}


def _ep_choices(case: Case, n_experts: int, seed: int = 0) -> np.ndarray:
    p = case.params
    tokens = int(p["tokens_per_gpu"]) * case.gpus
    groups = int(p.get("expert_groups") or 1)
    limit = int(p.get("topk_groups_effective") or 0) if groups > 1 else 0
    expert_group = (np.arange(n_experts) * groups // n_experts).astype(np.int32)
    pop = np.full(n_experts, 1.0 / n_experts)
    return routing_kernels.sample_topk(pop, expert_group, limit, tokens, int(p["topk"]), seed)


def predict_ep(case: Case, calibration=None) -> tuple[float, list[str]]:
    """DeepEP-style dispatch/combine of uniformly routed tokens over the system's topology.

    Normal mode: tokens deduplicated per destination GPU; across NVLink domains the hierarchical
    form (one RDMA transfer per destination node to the rail peer, then NVLink forwarding), all
    concurrent as DeepEP pipelines them. Low-latency mode: one message per token-expert selection,
    direct. Bandwidth metrics use each table's logical definition (bytes incl. local traffic).
    """
    p = case.params
    if case.metric not in ("bottleneck_GBps", "time_us"):
        raise Skip(f"unknown metric {case.metric!r} for EP")
    ranks = case.gpus
    experts = p.get("experts") or (p.get("experts_per_gpu") and p["experts_per_gpu"] * ranks)
    if not experts:
        raise Skip("expert count not stated by the source")
    experts = int(experts)
    if experts % ranks:
        raise Skip(f"{experts} experts do not divide over {ranks} ranks")
    h, tpg = int(p["hidden"]), int(p["tokens_per_gpu"])
    fp8 = p.get("dtype") == "fp8"
    per_token = h + 4 * h / 128 if fp8 else 2.0 * h
    fabric = build_fabric(case.system, ranks, _links(calibration, case.system))
    choices = _ep_choices(case, experts)
    token_gpu = (np.arange(len(choices)) // tpg).astype(np.int32)
    per_gpu = experts // ranks
    slot_gpu = (np.arange(experts) // per_gpu).astype(np.int32)
    ptr = np.arange(experts + 1, dtype=np.int32)
    slots = np.arange(experts, dtype=np.int32)
    domain = min(fabric.domain_gpus, ranks)
    low_latency = p.get("mode") == "low_latency"
    if low_latency:
        dst_gpu = slot_gpu[choices]
        pairs = np.bincount((token_gpu[:, None] * ranks + dst_gpu).ravel(), minlength=ranks * ranks)
        counts = pairs.reshape(ranks, ranks).astype(np.float64)
        src, dst = np.nonzero(counts)
        time_s = flows_time(fabric, src, dst, counts[src, dst] * (per_token if fp8 else 2.0 * h))
        logical = counts[0].sum()
    else:
        counts = traffic_kernels.dispatch_counts(choices, token_gpu, ptr, slots, slot_gpu, ranks).astype(float)
        rdma, forward = traffic_kernels.internode_counts(choices, token_gpu, ptr, slots, slot_gpu, ranks, domain)
        time_s = ep_exchange_time(fabric, counts * per_token, rdma * per_token, forward * per_token, domain)
        if p.get("bottleneck") == "rdma" and ranks > domain:
            dst_node = slot_gpu[choices] // domain
            mine = token_gpu == 0
            logical = float(sum(len(set(row)) for row in dst_node[mine]))
        else:
            logical = counts[:, 0].sum()
    if case.metric == "time_us":
        value = time_s / units.us
    else:
        def_bytes = h * (1 + 4 / 128) if fp8 and not low_latency else per_token
        if low_latency:
            def_bytes = (h + h / 128 * 4 + 16) if case.what == "ep_dispatch" else 2 * h
        value = logical * def_bytes / time_s / units.GBps
    ignored = [key for key in p if key not in EP_USED]
    return value, ignored


SERVING_USED = {"model", "phase", "parallel", "batch_per_gpu", "batch_tokens_per_gpu", "input_len", "context_len",
                "dtype", "attn_dtype", "kv_cache_dtype", "overlap", "eplb", "redundant_experts"}


def predict_serving(case: Case, calibration=None) -> tuple[float, list[str]]:
    """One serving step of the deployment the case describes, simulated by the engine."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate

    p = case.params
    phase = p.get("phase")
    if phase not in ("prefill", "decode"):
        raise Skip(f"phase {phase!r} (continuous batching of mixed prefill/decode) is not simulated yet")
    if case.metric not in ("tokens_per_s_per_gpu", "tokens_per_s_per_node", "tpot_ms", "ttft_ms"):
        raise Skip(f"unknown metric {case.metric!r} for serving")
    par = p.get("parallel") or {}
    if "ep" not in par:
        raise Skip("parallel split not stated by the source")
    if phase == "decode":
        if "batch_per_gpu" not in p or "context_len" not in p:
            raise Skip("decode batch per GPU or context length not stated by the source")
        batch, input_len, output_len = int(p["batch_per_gpu"]), int(p["context_len"]) - 1, 1
    else:
        tokens = p.get("batch_tokens_per_gpu")
        if not tokens or "input_len" not in p:
            raise Skip("prefill tokens per GPU or input length not stated by the source")
        input_len = int(p["input_len"])
        batch, output_len = max(int(tokens) // input_len, 1), 1
    tp, ep = int(par.get("tp", 1)), int(par["ep"])
    model = p["model"]
    from moesim.specs.model import load_model
    experts = load_model(model).moe.num_experts
    redundant = int(p.get("redundant_experts", 0))
    if (experts + redundant) % ep:
        if not p.get("eplb"):
            raise Skip(f"{experts} experts do not divide over ep {ep} and the source names no redundant experts")
        redundant += (-(experts + redundant)) % ep
    weights = p.get("dtype", "bf16")
    overrides = {"model": model, "system": case.system, "gpus": case.gpus, "parallel.tp": tp, "parallel.ep": ep,
                 "experts.redundant": redundant, "dtypes.weights": weights,
                 "dtypes.attention_weights": p.get("attn_dtype"), "dtypes.kv_cache": p.get("kv_cache_dtype", "bf16"),
                 "workload": {"kind": "serving", "phase": phase, "batch": batch, "input_len": input_len,
                              "output_len": output_len}}
    overrides.update(_profile_override(calibration, case.system))
    overlap = "two_batch" if p.get("overlap") == "two_batch" else "none"
    placement = "eplb" if (p.get("eplb") or redundant) else None
    result = simulate(load_scenario(None, overrides), overlap=overlap, placement=placement)
    m = result["metrics"]
    value = {"tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"], "tokens_per_s_per_node": m["tokens_per_s_per_node"],
             "tpot_ms": m.get("tpot_ms"), "ttft_ms": m.get("ttft_ms")}[case.metric]
    if value is None:
        raise Skip(f"metric {case.metric} does not apply to a {phase} step")
    ignored = [k for k in p if k not in SERVING_USED]
    if p.get("overlap") not in (None, "none", "two_batch"):
        ignored.append(f"overlap={p['overlap']} (simulated without overlap)")
    return value, ignored


TRAINING_USED = {"model", "parallel", "seq_len", "global_batch_seqs", "micro_batch", "dtype", "recompute"}


def predict_training(case: Case, calibration=None) -> tuple[float, list[str]]:
    """One training step of the case's Megatron-style split, simulated with the 1F1B pipeline."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate

    p = case.params
    if case.metric not in ("tflops_per_gpu", "mfu", "tokens_per_s_per_gpu", "step_time_s"):
        raise Skip(f"unknown metric {case.metric!r} for training")
    par = p.get("parallel") or {}
    if par.get("cp", 1) != 1:
        raise Skip("context parallelism is not modelled yet")
    missing = [k for k in ("seq_len", "global_batch_seqs") if k not in p]
    if missing:
        raise Skip(f"missing params: {', '.join(missing)}")
    dtype = p.get("dtype", "bf16")
    overrides = {"model": p["model"], "system": case.system, "gpus": case.gpus,
                 "parallel.tp": int(par.get("tp", 1)), "parallel.pp": int(par.get("pp", 1)),
                 "parallel.ep": int(par.get("ep", 1)), "dtypes.weights": dtype, "dtypes.kv_cache": "bf16",
                 "runtime.framework": "megatron",
                 "workload": {"kind": "training", "seq_len": int(p["seq_len"]), "micro_batch": int(p.get("micro_batch", 1)),
                              "global_batch": int(p["global_batch_seqs"]),
                              "recompute": p.get("recompute", "none") if p.get("recompute") in ("none", "selective", "full")
                              else "none"}}
    overrides.update(_profile_override(calibration, case.system))
    result = simulate(load_scenario(None, overrides))
    value = result["metrics"][case.metric]
    ignored = [k for k in p if k not in TRAINING_USED] + [f"parallel.{k}" for k in par if k not in ("tp", "pp", "ep", "cp")]
    return value, ignored


PREDICTORS: dict[str, Callable[[Case, Optional[Calibrated]], tuple[float, list[str]]]] = {
    "training": predict_training,
    "memory": lambda case, cal: validation_memory.predict_memory(case),
    "memcpy": lambda case, cal: validation_memcpy.predict_memcpy(case, cal.profile if cal else None),
    "serving": predict_serving,
    "collective": predict_collective,
    "ep_dispatch": predict_ep,
    "ep_combine": predict_ep,
    "gemm": lambda case, cal: validation_compute.predict_gemm(case, cal.profile if cal else None),
    "grouped_gemm": lambda case, cal: validation_compute.predict_grouped_gemm(case, cal.profile if cal else None),
}
LATER: dict[str, str] = {}


def validate(cases: list[Case], *, profile: Optional[str | list[str]] = None) -> dict:
    """Predict every case; MAPE per `what` and overall over the cases predicted. Each calibration
    profile applies to the cases on the GPU it was fitted on (one profile per GPU)."""
    profiles = [profile] if isinstance(profile, str) else list(profile or [])
    by_gpu: dict[str, Calibrated] = {}
    for path in profiles:
        from moesim.calibration.fit import load_calibration
        loaded = load_calibration(path)
        if loaded.gpu in by_gpu:
            raise MoesimError(f"two profiles for {loaded.gpu}: {by_gpu[loaded.gpu].path} and {path}",
                              field="--profile", fix="give one profile per GPU")
        by_gpu[loaded.gpu] = Calibrated(path=path, profile=loaded)
    systems = set(system_names())
    models = set(model_names())
    rows, skipped = [], []
    for case in cases:
        reason = None
        if case.what not in PREDICTORS:
            reason = f"what {case.what!r} not modelled yet: {LATER.get(case.what, 'unknown kind of case')}"
        elif case.system not in systems:
            reason = f"unknown system {case.system!r}"
        elif "model" in case.params and case.params["model"] not in models:
            reason = f"unknown model {case.params['model']!r}"
        if reason is None:
            try:
                calibration = by_gpu.get(load_system(case.system).gpu.id) if by_gpu else None
                predicted, ignored = PREDICTORS[case.what](case, calibration)
            except (Skip, validation_compute.Skip, validation_memory.Skip, validation_memcpy.Skip) as exc:
                reason = str(exc)
            except MoesimError as exc:
                reason = f"cannot model: {exc.one_line()}"
        if reason is not None:
            skipped.append({"id": case.id, "reason": reason})
            continue
        rows.append({"id": case.id, "what": case.what, "metric": case.metric, "measured": case.measured,
                     "predicted": predicted, "rel_error": (predicted - case.measured) / case.measured,
                     "ignored_params": ignored})
    mape: dict[str, float] = {}
    if rows:
        mape["overall"] = float(np.mean([abs(r["rel_error"]) for r in rows]))
        for what in sorted({r["what"] for r in rows}):
            mape[what] = float(np.mean([abs(r["rel_error"]) for r in rows if r["what"] == what]))
    from moesim.core.result import code_version
    return {"cases": rows, "mape": mape, "skipped": skipped,
            "provenance": {"code": code_version(), "profile": ", ".join(profiles) or None}}

