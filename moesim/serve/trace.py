"""A serving run as a Chrome/Perfetto trace: engine steps and request phases on one clock.

Two processes, as `sim.engine.chrome_trace` lays out a step (pid = what, tid = which one):
- pid 0 "engines": one thread per engine instance ("instance 0", or "prefill 0" / "decode 1"
  when disaggregated), one complete event per engine step, named by what it holds and carrying
  the prompt tokens and decode sequences of the step (summed over the instance's attention-DP
  ranks, and the busiest rank's, which sets the step time) and the step model's prefill time of the
  busiest rank's prompt tokens (`prefill_model_s`, what the backend's prefill scale multiplies);
- pid 1 "requests": one thread per request, one complete event per phase of its life. The phases
  are fixed per mode, so a reader (and a test) knows how many to expect: aggregated `queue`,
  `prefill`, `decode`; disaggregated `queue`, `prefill`, `kv_wait` (for a decode rank's KV
  reservation), `kv_transfer`, `handoff` (to the decode worker), `decode`. A phase of zero length is still written: "this request
  did not wait" is information.

Times are microseconds as Chrome's trace format wants; events are written in the order the run
produced them, so the same run gives the same bytes.
"""
from __future__ import annotations

import numpy as np

US = 1e6   # trace timestamps are microseconds
ENGINES_PID, REQUESTS_PID = 0, 1


class StepTrace:
    """Engine steps as they happen (the run calls `step` at each step end)."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.events: list[dict] = []

    def step(self, instance: int, start_s: float, end_s: float, plan) -> None:
        prefill = [sum(n for _, n in chunks) for chunks in plan.chunks]
        decode = [len(d) for d in plan.decodes]
        p, d = sum(prefill), sum(decode)
        name = (f"prefill {p} tok" if not d else f"decode {d}" if not p else f"mixed {p} tok + {d}")
        self.events.append({"ph": "X", "pid": ENGINES_PID, "tid": instance, "name": name,
                            "cat": "prefill" if p and not d else "decode" if d and not p else "mixed",
                            "ts": start_s * US, "dur": (end_s - start_s) * US,
                            "args": {"prefill_tokens": p, "decode_sequences": d,
                                     "busiest_rank_prefill_tokens": max(prefill, default=0),
                                     "busiest_rank_decode_sequences": max(decode, default=0),
                                     "prefill_model_s": plan.prefill_s}})


def chrome_trace(name: str, steps: StepTrace, phases: list[tuple[str, np.ndarray, np.ndarray]],
                 requests: int, warmup: int) -> dict:
    """The trace JSON: `phases` is [(phase name, start times, end times)] over all requests
    (arrays indexed by request id, seconds), in the order a request goes through them."""
    trace = [{"ph": "M", "pid": ENGINES_PID, "name": "process_name", "args": {"name": f"{name}: engines"}},
             {"ph": "M", "pid": REQUESTS_PID, "name": "process_name", "args": {"name": f"{name}: requests"}}]
    for tid, label in enumerate(steps.labels):
        trace.append({"ph": "M", "pid": ENGINES_PID, "tid": tid, "name": "thread_name", "args": {"name": label}})
    for req in range(requests):
        label = f"request {req}" + (" (warm-up)" if req < warmup else "")
        trace.append({"ph": "M", "pid": REQUESTS_PID, "tid": req, "name": "thread_name", "args": {"name": label}})
    trace.extend(steps.events)
    for req in range(requests):
        for phase, start, end in phases:
            trace.append({"ph": "X", "pid": REQUESTS_PID, "tid": req, "name": phase, "cat": phase,
                          "ts": float(start[req]) * US, "dur": float(end[req] - start[req]) * US})
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


__all__ = ["StepTrace", "chrome_trace"]
