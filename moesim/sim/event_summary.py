"""What the engine's events say: time per op class on the critical GPU, and one layer's timeline."""
from __future__ import annotations


def breakdown(events, critical_gpu: int) -> dict:
    """Per op class on the critical GPU: compute seconds, comm seconds, comm seconds during which
    that GPU's compute stream was idle (exposed), and time spent waiting for slower peers (idle)."""
    mine = [e for e in events if e.gpu == critical_gpu]
    busy = sorted((e.start_s, e.end_s) for e in mine if e.stream == "compute")
    out: dict[str, dict[str, float]] = {}
    for e in mine:
        row = out.setdefault(e.op_class, {"compute_s": 0.0, "comm_s": 0.0, "exposed_comm_s": 0.0, "idle_s": 0.0})
        span = e.end_s - e.start_s
        if e.op_class == "idle_wait":
            row["idle_s"] += span
            continue
        if e.stream == "compute":
            row["compute_s"] += span
            continue
        row["comm_s"] += span
        covered = sum(max(0.0, min(e.end_s, b) - max(e.start_s, a)) for a, b in busy)
        row["exposed_comm_s"] += max(span - covered, 0.0)
    return out


def layer_timeline(events, layer: int, *, unit: str = "gpu") -> dict:
    """Every GPU's compute and comm spans of one layer, times from the layer's first start:
    what a report draws as the per-GPU timeline (the whole step is in --trace). Layer -1 is the
    training pipeline, whose rows are stages."""
    mine = [e for e in events if e.layer == layer]
    t0 = min((e.start_s for e in mine), default=0.0)
    return {"layer": layer, "rows": unit,
            "columns": [unit, "stream", "op_class", "name", "microbatch", "start_s", "end_s"],
            "spans": [[e.gpu, e.stream, e.op_class, e.name, e.microbatch, e.start_s - t0, e.end_s - t0]
                      for e in mine]}
