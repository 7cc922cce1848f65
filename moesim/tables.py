"""Plain-text tables for the terminal: fixed columns, units in the header, same numbers as JSON."""
from __future__ import annotations

from typing import Iterable, Sequence

from .units import GiB


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: str | None = None) -> str:
    """Render rows under headers; `align` is one 'l'/'r' per column (default: text left, numbers right)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and all(_numeric(r[i]) for r in rows) else "l" for i in range(len(headers)))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:,.2f}"


def memory_table(ledger: dict, scenario_line: str) -> str:
    """The VRAM ledger of the fullest GPU as a table, then the verdict."""
    per = ledger["per_gpu"]
    total, cap = per["total_bytes"], per["capacity_bytes"]
    rows = []
    labels = [("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache"),
              ("activations_bytes", "activations"), ("buffers_bytes", "comm buffers"),
              ("reserved_bytes", "reserved (CUDA ctx, graphs)"), ("gradients_bytes", "gradients"),
              ("optimizer_bytes", "optimizer states")]
    for key, label in labels:
        rows.append([label, gib(per[key]), f"{100 * per[key] / cap:.1f}%"])
    rows.append(["total", gib(total), f"{100 * total / cap:.1f}%"])
    out = [scenario_line, "",
           table(["part (per GPU)", "GiB", "of capacity"], rows, align="lrr"), "",
           f"capacity {gib(cap)} GiB; budget {gib(ledger['budget_bytes'])} GiB "
           f"(memory fraction {ledger['memory_fraction']:.2f}); pipeline stage {ledger['binding_stage']} is fullest",
           f"fits: {'yes' if ledger['fits'] else 'NO'}  headroom {gib(ledger['headroom_bytes'])} GiB"]
    if "max_kv_tokens_per_gpu" in ledger:
        out.append(f"max KV tokens per GPU: {ledger['max_kv_tokens_per_gpu']:,} "
                   f"({ledger['kv_bytes_per_token_per_gpu']:,.0f} B per token per GPU)")
    if "max_micro_batch" in ledger:
        out.append(f"max micro-batch that fits: {ledger['max_micro_batch']}")
    return "\n".join(out)
