"""The SimPy engine: per-GPU compute and communication streams running the layers of one step.

The engine holds no cost formulas: it receives, per layer, what each GPU computes (seconds per
op, per GPU) and what each collective costs (seconds, from the network model), and it schedules
them. Each GPU has a compute stream and a communication stream (SimPy resources of capacity 1);
a collective starts when every participant has reached it and holds each participant's comm
stream for its duration, so the slowest GPU of an MoE layer sets the pace of all. The time a GPU
spends waiting for the others is recorded as an `idle_wait` span on its comm stream.

Overlap modes:
- `none`: one micro-batch; every op waits for the previous one.
- `two_batch`: the batch is split into two micro-batches that alternate (DeepSeek/SGLang
  two-batch overlap): while one micro-batch's dispatch/combine holds the comm stream, the other's
  attention or experts use the compute stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import simpy

OpKind = Literal["compute", "comm"]


@dataclass(frozen=True)
class Op:
    """One step of a layer: `durations[g]` seconds on GPU g (compute), or one collective (comm)."""

    name: str
    op_class: str
    kind: OpKind
    durations: tuple[float, ...]  # per GPU for compute; a single value for comm


def fuse(ops: list[Op]) -> Op:
    """Back-to-back compute ops as one engine step (fewer events); the trace still shows each
    part with its own class, in order, so breakdowns are unchanged."""
    return FusedOp(name="+".join(op.name for op in ops), op_class="fused", kind="compute",
                   durations=_summed([op.durations for op in ops]), parts=tuple(ops))


def _uniform(values: tuple) -> bool:
    """Every GPU's value is the same (most ops: one GEMM time for the whole group)."""
    return bool(values) and values.count(values[0]) == len(values)


def _summed(durations: list[tuple]) -> tuple:
    """Per GPU, the sum of its durations in order (`sum`, from 0). When every op is the same on
    every GPU, that sum is made once and repeated: the same additions, so the same float."""
    if durations and all(map(_uniform, durations)):
        return (sum(d[0] for d in durations),) * min(map(len, durations))
    return tuple(sum(parts) for parts in zip(*durations))


@dataclass(frozen=True)
class FusedOp(Op):
    parts: tuple[Op, ...] = ()


@dataclass
class TraceEvent:
    gpu: int
    stream: str
    name: str
    op_class: str
    microbatch: int
    start_s: float
    end_s: float
    layer: int = -1  # index of the layer in run_step's list; -1 where there are no layers (pipeline)


@dataclass
class EngineResult:
    makespan_s: float
    events: list[TraceEvent] = field(default_factory=list)


class _Collective:
    """Barrier + shared duration: every participant waits for all, then for the collective."""

    def __init__(self, env: simpy.Environment, participants: int, duration: float):
        self.env, self.n, self.duration = env, participants, duration
        self.arrived = 0
        self.all_here = env.event()
        self.start: Optional[float] = None

    def join(self):
        self.arrived += 1
        if self.arrived == self.n:
            self.start = self.env.now
            self.all_here.succeed()
        yield self.all_here
        yield self.env.timeout(self.duration)


def fuse_runs(ops: list[Op]) -> list[Op]:
    """Merge every run of consecutive compute ops into one step: a micro-batch keeps its compute
    stream for back-to-back kernels (one CUDA stream), so how finely a caller splits its ops
    cannot change the schedule."""
    out: list[Op] = []
    run: list[Op] = []
    for op in ops + [None]:
        if op is not None and op.kind == "compute":
            run.extend(op.parts if isinstance(op, FusedOp) else [op])
            continue
        if run:
            out.append(run[0] if len(run) == 1 else fuse(run))
            run = []
        if op is not None:
            out.append(op)
    return out


def run_step(layers: list[list[Op]], gpus: int, *, microbatches: int = 1, record: bool = True) -> EngineResult:
    """Simulate one forward step: `layers[l]` is the op list of layer l (same for every
    micro-batch; durations are per micro-batch). Returns the makespan and the trace."""
    layers = [fuse_runs(ops) for ops in layers]
    if microbatches == 1 and not record:
        return EngineResult(makespan_s=_one_microbatch_makespan(layers, gpus))
    env = simpy.Environment()
    compute = [simpy.Resource(env, capacity=1) for _ in range(gpus)]
    comm = [simpy.Resource(env, capacity=1) for _ in range(gpus)]
    collectives: dict[tuple[int, int, int], _Collective] = {}
    events: list[TraceEvent] = []

    def collective(mb: int, layer: int, index: int, op: Op) -> _Collective:
        key = (mb, layer, index)
        if key not in collectives:
            collectives[key] = _Collective(env, gpus, op.durations[0])
        return collectives[key]

    def microbatch_on_gpu(gpu: int, mb: int):
        for li, ops in enumerate(layers):
            for oi, op in enumerate(ops):
                stream = compute[gpu] if op.kind == "compute" else comm[gpu]
                with stream.request() as req:
                    yield req
                    start = env.now
                    if op.kind == "compute":
                        yield env.timeout(op.durations[gpu])
                    else:
                        coll = collective(mb, li, oi, op)
                        yield from coll.join()
                        if record and coll.start > start:
                            events.append(TraceEvent(gpu, "comm", f"wait for {op.name}", "idle_wait", mb,
                                                     start, coll.start, li))
                        start = coll.start
                    if record and isinstance(op, FusedOp):
                        for part in op.parts:
                            end = start + part.durations[gpu]
                            events.append(TraceEvent(gpu, "compute", part.name, part.op_class, mb, start, end, li))
                            start = end
                    elif record:
                        events.append(TraceEvent(gpu, op.kind, op.name, op.op_class, mb, start, env.now, li))

    for gpu in range(gpus):
        for mb in range(microbatches):
            env.process(microbatch_on_gpu(gpu, mb))
    env.run()
    return EngineResult(makespan_s=env.now, events=events)


def _one_microbatch_makespan(layers: list[list[Op]], gpus: int) -> float:
    """The makespan `run_step` simulates for one micro-batch, without SimPy: with one micro-batch
    no stream is ever contended, so each GPU's clock only advances by its compute ops and jumps
    to (last arrival + duration) at each collective. The additions are the ones SimPy makes
    (`now + delay`, element by element in the same order; made once while every GPU's clock and
    op are the same), so the float is the same (tests/test_engine.py checks it); a serving
    step-time grid point costs ~40 % less."""
    clock = [0.0] * gpus
    same = True   # every GPU's clock is the same (after a collective, until an op differs by GPU)
    for ops in layers:
        for op in ops:
            if op.kind != "compute":
                end = max(clock) + op.durations[0]
                clock, same = [end] * gpus, True
            elif same and len(op.durations) == len(clock) and _uniform(op.durations):
                clock = [clock[0] + op.durations[0]] * len(clock)   # the one addition every GPU makes
            else:
                clock, same = [t + d for t, d in zip(clock, op.durations)], False
    return max(clock) if clock else 0.0


def chrome_trace(result: EngineResult, *, name: str) -> dict:
    """Chrome/Perfetto trace JSON: one process per GPU, one thread per stream, times in us."""
    trace = [{"ph": "M", "pid": 0, "name": "process_name", "args": {"name": name}}]
    gpus = sorted({e.gpu for e in result.events})
    for gpu in gpus:
        trace.append({"ph": "M", "pid": gpu, "name": "process_name", "args": {"name": f"GPU {gpu}"}})
        for tid, stream in ((0, "compute"), (1, "comm")):
            trace.append({"ph": "M", "pid": gpu, "tid": tid, "name": "thread_name", "args": {"name": stream}})
    for e in result.events:
        trace.append({"ph": "X", "pid": e.gpu, "tid": 0 if e.stream == "compute" else 1, "name": e.name,
                      "cat": e.op_class, "ts": e.start_s * 1e6, "dur": (e.end_s - e.start_s) * 1e6,
                      "args": {"microbatch": e.microbatch, "layer": e.layer}})
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def one_f_one_b(stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """The 1F1B order of one pipeline stage (Narayanan et al. 2021, PipeDream-Flush): warm-up
    forwards, then alternate one forward and one backward, then drain the backwards."""
    warmup = min(stages - stage - 1, microbatches)
    order = [("F", mb) for mb in range(warmup)]
    fwd, bwd = warmup, 0
    while fwd < microbatches:
        order += [("F", fwd), ("B", bwd)]
        fwd, bwd = fwd + 1, bwd + 1
    order += [("B", mb) for mb in range(bwd, microbatches)]
    return order


def run_pipeline(forward_s: list[float], backward_s: list[float], microbatches: int, p2p_s: float,
                 *, record: bool = True) -> EngineResult:
    """Simulate one training step's pipeline: stage s spends `forward_s[s]` / `backward_s[s]` per
    micro-batch (all its layers, communication inside them included); activations and gradients
    cross between stages in `p2p_s`. One representative GPU per stage (stages are symmetric
    across their data- and expert-parallel ranks); trace pid = stage."""
    env = simpy.Environment()
    stages = len(forward_s)
    fwd_ready = [[env.event() for _ in range(microbatches)] for _ in range(stages)]
    bwd_ready = [[env.event() for _ in range(microbatches)] for _ in range(stages)]
    events: list[TraceEvent] = []

    def deliver(event: simpy.Event, delay: float):
        yield env.timeout(delay)
        event.succeed()

    def stage_process(s: int):
        for kind, mb in one_f_one_b(s, stages, microbatches):
            if kind == "F":
                if s > 0:
                    yield fwd_ready[s][mb]
                start = env.now
                yield env.timeout(forward_s[s])
                if s + 1 < stages:
                    env.process(deliver(fwd_ready[s + 1][mb], p2p_s))
            else:
                if s + 1 < stages:
                    yield bwd_ready[s][mb]
                start = env.now
                yield env.timeout(backward_s[s])
                if s > 0:
                    env.process(deliver(bwd_ready[s - 1][mb], p2p_s))
            if record:
                name = "forward" if kind == "F" else "backward"
                events.append(TraceEvent(s, "compute", f"{name} mb{mb}", name, mb, start, env.now))

    for s in range(stages):
        env.process(stage_process(s))
    env.run()
    return EngineResult(makespan_s=env.now, events=events)
