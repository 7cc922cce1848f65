"""Serving benchmarks whose parallel split the file states twice, and differently: which one to simulate.

validation/serving_load.yaml names each run after the engine's launch flags, e.g.
`..._sglang_fp4_agg_1024x1024_c4_tp8_ep8_1015`: SGLang `--tp 8 --ep 8`, TRT-LLM `tp_size 8,
ep_size 8`, the MoE layers' expert parallelism inside the 8 tensor-parallel ranks, 8 GPUs. 128 of
its benchmarks (256 cases, one import: `source_file=2026-04-06.csv`) state a pool of N x M GPUs for
a run named `tpN_epM`, M > 1: `tp 64, moe_tp 8, moe_ep 8, gpus 64` for the run above. The file
itself says which is right: 94 of those 256 cases appear again, the same measurement to the
hundredth of a millisecond, in other imports (`source_file=2026-03-25.csv`, the Qwen3.5 gap
analysis: 140 records), every time under the run name's split and never under the N x M one. A
DeepSeek-R1 attention layer split 64 ways across 8 nodes for 4 clients is no deployment anyone
launches either.

So where a run named `tpN_epM` (M > 1) states N x M GPUs, the case is simulated on the run name's
N GPUs: attention tp min(tp, N) with the rest as attention-DP ranks, MoE moe_ep M x moe_tp N / M,
and the same total batch slots. Records with no split in their name take it from the file too:
- the same measurement and the same stated pool as a relabelled run (`db-dump` imports): the same
  run, so its split;
- otherwise a pool with moe_tp = moe_ep = M > 1 over M x M GPUs: every record of the file with that
  stated pool and a split in its name is named tpM_epM (110 benchmarks), and no other stated pool
  of the file has experts split both ways but one 8-GPU TP 8 run's (moe_tp 2 x moe_ep 4). 67
  `db-dump` benchmarks (134 cases). Where a measurement of such a configuration appears again
  under a split of M GPUs, that split is the configuration's: 34 of its cases appear again under the
  run-name split, and config 181's 28 take config 83's TP 8 / moe_tp 8, whose TPOT it repeats
  within 1 % at 13 of the 14 loads they share (2.5 % at the 14th).
Every such case carries `relabelled` (why), and `moesim validate` reports them; nothing else changes.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from moesim.validation.cases import Case

WHAT = "serving_load"
_RUN_SPLIT = re.compile(r"_tp(\d+)_ep(\d+)(?:_|$)")


def run_name_split(run: Optional[str]) -> Optional[tuple[int, int]]:
    """(N, M) of a run named `..._tpN_epM...`, or None."""
    found = _RUN_SPLIT.search(run or "")
    return (int(found[1]), int(found[2])) if found else None


def split_of_run_name(pool: dict, tp_flag: int, ep_flag: int) -> Optional[dict]:
    """The pool the run name `tp{tp_flag}_ep{ep_flag}` describes, where the stated pool has
    tp_flag x ep_flag GPUs; None where the stated pool already has the run name's GPUs or the
    run name's split cannot hold the stated one (then the record is left as it is)."""
    if ep_flag < 2 or tp_flag % ep_flag or pool.get("gpus") != tp_flag * ep_flag or not _whole_numbers(pool):
        return None   # a malformed pool is left to `serving_load.benchmark_of`, which skips it and says why
    new_tp = min(pool["tp"], tp_flag)
    if tp_flag % new_tp:
        return None
    return _on_split(pool, {"tp": new_tp, "attn_dp": tp_flag // new_tp, "moe_tp": tp_flag // ep_flag,
                            "moe_ep": ep_flag, "gpus": tp_flag})


SPLIT = ("tp", "attn_dp", "moe_tp", "moe_ep", "gpus")


def _on_split(pool: dict, split: dict) -> dict:
    """`pool` on another split, with the same batch slots in all (its per-rank limit x its ranks)."""
    out = dict(pool, **{k: split[k] for k in SPLIT})
    if "max_batch_per_attn_dp" in pool:
        out["max_batch_per_attn_dp"] = pool["max_batch_per_attn_dp"] * pool.get("attn_dp", 1) // split["attn_dp"]
    return out


def _whole_numbers(pool: dict) -> bool:
    keys = ("tp", "gpus", "moe_tp", "moe_ep") + tuple(k for k in ("attn_dp", "max_batch_per_attn_dp") if k in pool)
    return all(isinstance(pool.get(k), int) and not isinstance(pool.get(k), bool) and pool[k] > 0 for k in keys)


def _agg_pool(case: "Case") -> Optional[dict]:
    """The pool of an aggregated serving benchmark, the only records relabelled; None for any other."""
    pool = case.params.get("pool") if case.what == WHAT and case.params.get("mode") == "agg" else None
    return pool if isinstance(pool, dict) else None


def _same_run(case: "Case") -> tuple:
    """What two records of one measurement share: everything but their names and pool limits."""
    p = dict(case.params)
    p.pop("hf_model", None)
    pool = {k: v for k, v in (p.pop("pool", None) or {}).items() if k != "max_batch_per_attn_dp"}
    return (case.what, case.system, case.gpus, case.metric, case.measured, repr(sorted(p.items())),
            repr(sorted(pool.items())))


def relabelled(cases: list["Case"]) -> list["Case"]:
    """The cases, with those whose stated split contradicts their run name (or a relabelled twin's)
    on the run name's split, each marked `relabelled` with the reason. Order and ids unchanged."""
    named: dict[str, tuple[dict, str]] = {}
    by_run: dict[tuple, tuple[dict, str]] = {}
    others: list[tuple["Case", dict, tuple]] = []   # the aggregated records not relabelled by their name
    for case in cases:
        pool = _agg_pool(case)
        if pool is None:
            continue
        split = run_name_split(getattr(case, "run", None))
        new = split_of_run_name(pool, *split) if split is not None else None
        if new is None:
            others.append((case, pool, _same_run(case)))
            continue
        n, m = split
        reason = (f"run named tp{n}_ep{m} states a pool of {pool['gpus']} GPUs (tp {pool['tp']}, attn_dp "
                  f"{pool.get('attn_dp', 1)}, moe_tp {pool['moe_tp']}, moe_ep {pool['moe_ep']}); simulated on the "
                  f"run name's {n} GPUs (tp {new['tp']}, attn_dp {new['attn_dp']}, moe_tp {new['moe_tp']}, moe_ep "
                  f"{new['moe_ep']}) as this file's other records of the same measurement state")
        named[case.id] = (new, reason)
        by_run.setdefault(_same_run(case), (new, f"same measurement and stated pool as run {case.run}: {reason}"))
    found = dict(named)
    rest = []
    for case, pool, key in others:
        if key in by_run:
            split, reason = by_run[key]
            found[case.id] = (_on_split(pool, split), reason)
        else:
            rest.append((case, pool))
    found.update(_square_splits(rest))
    return [_with_pool(case, *found[case.id]) if case.id in found else case for case in cases]


def _square_split(case: "Case", pool: dict) -> Optional[dict]:
    """The run-name split of an unnamed record whose pool is moe_tp = moe_ep = M over M x M GPUs."""
    m = pool.get("moe_ep")
    if run_name_split(getattr(case, "run", None)) is not None or not isinstance(m, int) or m < 2:
        return None
    return split_of_run_name(pool, m, m) if pool.get("moe_tp") == m else None


def _measurement(case: "Case") -> tuple:
    """One measurement, whatever its labels say of the deployment's split and version."""
    p = case.params
    return (case.what, case.system, p.get("model"), p.get("backend"), p.get("weights_dtype"), p.get("moe_dtype"),
            p.get("isl"), p.get("osl"), p.get("concurrency"), case.metric, round(case.measured, 2))


def _configuration(case: "Case") -> str:
    p = {k: v for k, v in case.params.items() if k not in ("isl", "osl", "concurrency")}
    p["pool"] = {k: v for k, v in p["pool"].items() if k != "max_batch_per_attn_dp"}
    return repr((case.what, case.system, case.gpus, sorted(p.items(), key=lambda kv: kv[0])))


def _square_splits(records: list[tuple["Case", dict]]) -> dict[str, tuple[dict, str]]:
    """(pool, reason) of each unnamed record (of `records`: aggregated, not relabelled otherwise) with
    the moe_tp = moe_ep = M pattern, per configuration (all its loads): the run-name split on M GPUs -
    unless one of its measurements appears again under another split of M GPUs, which then names the
    configuration's split (config 181 of the file repeats config 83's TP 8 / moe_tp 8 TPOT within 1 %
    at 13 of 14 shared loads)."""
    stated: dict[tuple, tuple[dict, str]] = {}
    configs: dict[str, list[tuple["Case", dict]]] = {}
    for case, pool in records:
        if _square_split(case, pool) is None:
            stated.setdefault(_measurement(case), (pool, case.run))
        else:
            configs.setdefault(_configuration(case), []).append((case, pool))
    out = {}
    for members in configs.values():
        first, pool = members[0]
        m = pool["moe_ep"]
        split = _square_split(first, pool)
        reason = (f"no split in its run name; its pool (moe_tp = moe_ep = {m} over {pool['gpus']} GPUs) is the one "
                  f"every run this file names tp{m}_ep{m} states, and those ran on {m} GPUs")
        for case, _ in members:
            twin = stated.get(_measurement(case))
            if twin is not None and twin[0].get("gpus") == split["gpus"]:
                split = dict(twin[0], attn_dp=twin[0].get("attn_dp", 1))
                reason = (f"no split in its run name; its pool (moe_tp = moe_ep = {m} over {pool['gpus']} GPUs) is "
                          f"the pattern of runs named tp{m}_ep{m}, which ran on {m} GPUs, and its measurements appear "
                          f"again under run {twin[1]}'s split on {m} GPUs")
                break
        out.update({case.id: (_on_split(mine, split), reason) for case, mine in members})
    return out


def _with_pool(case: "Case", pool: dict, reason: str) -> "Case":
    return case.model_copy(update={"params": dict(case.params, pool=pool), "gpus": pool["gpus"],
                                   "relabelled": reason})


__all__ = ["relabelled", "run_name_split", "split_of_run_name"]
