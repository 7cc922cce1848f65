"""Whether a deployment can run at all: the VRAM check every command shares, and what would fit.

A throughput for a deployment that does not fit in memory is not an answer: `simulate`, `whatif`
and `plan` all ask `fit_problem` first and refuse (or, with `--ignore-memory`, say on every
figure that they were told to look anyway). The fix a user gets is computed, not guessed: the
largest batch (serving) or micro-batch (training) that fits at this split, else the smallest
larger expert-parallel group (GPUs and EP doubled, TP and PP kept) that holds the weights.
"""
from __future__ import annotations

from typing import Any, Optional

from moesim.cluster.scenario import Scenario, ScenarioInput, Serving, apply_overrides, resolve_scenario
from moesim.core.errors import MoesimError
from moesim.core.loader import parse_record
from moesim.core.units import GiB
from moesim.costs.memory import MemoryLedger, memory_ledger

GROWTH_STEPS = 4  # try 2x, 4x, 8x, 16x the GPUs before giving up on a suggestion


def shortfall_text(ledger: MemoryLedger) -> str:
    """`does not fit in VRAM: X GiB per GPU needed, budget Y GiB (F% of C GiB); short by Z GiB`."""
    need = ledger.per_gpu["total_bytes"]
    return (f"does not fit in VRAM: {need / GiB:.1f} GiB per GPU needed, budget {ledger.budget_bytes / GiB:.1f} GiB "
            f"({ledger.memory_fraction:.0%} of {ledger.per_gpu['capacity_bytes'] / GiB:.1f} GiB); "
            f"short by {(need - ledger.budget_bytes) / GiB:.1f} GiB")


def _variant(sc: Scenario, overrides: dict[str, Any]) -> Optional[Scenario]:
    """The scenario with overrides applied and re-resolved, or None when that split is invalid."""
    data = apply_overrides(sc.input.model_dump(mode="json"), overrides)
    try:
        return resolve_scenario(parse_record(ScenarioInput, data, file="(feasibility)"), source_file=sc.source_file)
    except MoesimError:
        return None


def _largest_fitting_batch(sc: Scenario) -> Optional[int]:
    """Largest serving batch per DP rank below the scenario's that fits (binary search), or None."""
    w = sc.input.workload
    low, high = 0, w.batch  # low fits (0 = nothing found yet), high does not
    while high - low > 1:
        mid = (low + high) // 2
        candidate = _variant(sc, {"workload.batch": mid})
        if candidate is not None and memory_ledger(candidate).fits:
            low = mid
        else:
            high = mid
    return low or None


def what_would_fit(sc: Scenario, ledger: MemoryLedger) -> str:
    """One sentence a user can act on: a smaller batch at this split, or a larger EP group."""
    w = sc.input.workload
    if isinstance(w, Serving):
        batch = _largest_fitting_batch(sc)
        if batch:
            return f"batch {batch} per DP rank fits at this split (--batch {batch})"
    elif ledger.max_micro_batch:
        return f"micro-batch {ledger.max_micro_batch} fits at this split (workload.micro_batch)"
    p = sc.plan
    for step in range(1, GROWTH_STEPS + 1):
        gpus, ep = sc.gpus * 2**step, p.ep * 2**step
        candidate = _variant(sc, {"gpus": gpus, "parallel.tp": p.tp, "parallel.pp": p.pp, "parallel.ep": ep})
        if candidate is not None and memory_ledger(candidate).fits:
            return f"{gpus} GPUs with EP {ep} fit (--gpus {gpus} --ep {ep}{f' --tp {p.tp}' if p.tp > 1 else ''}" \
                   f"{f' --pp {p.pp}' if p.pp > 1 else ''})"
    return "no smaller batch or larger EP group up to 16x the GPUs fits: use a smaller weights format or more PP stages"


def fit_problem(sc: Scenario, ledger: Optional[MemoryLedger] = None) -> Optional[str]:
    """None when the deployment fits; else the shortfall in one line (see `shortfall_text`)."""
    ledger = ledger or memory_ledger(sc)
    return None if ledger.fits else shortfall_text(ledger)


def require_fit(sc: Scenario, *, field: str = "memory") -> MemoryLedger:
    """The ledger of a deployment that fits; a MoesimError with the shortfall and a fix otherwise."""
    ledger = memory_ledger(sc)
    if not ledger.fits:
        raise MoesimError(shortfall_text(ledger), field=field,
                          fix=f"{what_would_fit(sc, ledger)}; or --ignore-memory to see the numbers anyway")
    return ledger
