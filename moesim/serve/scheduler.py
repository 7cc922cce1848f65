"""Continuous batching on one engine instance, as the serving framework's defaults run it.

An engine instance is one expert-parallel group: `(ep x etp) / tp` attention-DP ranks that step
in lockstep (every MoE layer's all-to-all joins them), each with its own running requests and KV
cache. The policy is data with sources (`workloads/frameworks.yaml`, `batching`):

- admission (`kv_admission`): a waiting request joins its rank when fewer than
  `max_running_requests_per_rank` run there and the rank's KV cache can hold, first come first
  served (the head of the queue blocks the rest),
  - `whole_request` (TRT-LLM's GUARANTEED_NO_EVICT; the default): its whole ISL + OSL, reserved at
    admission, so a running request can always grow and nothing is preempted;
  - `incremental` (vLLM V1): its prompt only; the KV grows a token per decoded token, and when a
    rank's decode tokens no longer fit, the most recently started decoding request is preempted:
    its KV is freed, it goes back to the front of the queue, and when admitted again it prefills
    its prompt plus what it had generated (recompute) and goes on decoding; its client sees one
    long inter-token gap. Disaggregated pools always reserve whole requests (SGLang's decode
    PreallocQueue).
- step composition per rank: `mixed` (vLLM V1): every decoding request gives one token, prompt
  chunks fill what is left of `step_token_budget`; `prefill_first` (SGLang): a rank with prompt
  tokens to process runs a prefill step of up to `step_token_budget` tokens, else a decode step.
  Prompts are taken first come first served and the last one is chunked to fit.
- every decoding request of a rank gives one token per decode step (vLLM refuses a
  `max_num_batched_tokens` below `max_num_seqs`, so its decode tokens always fit the budget);
- CUDA graphs: a decode-only step's batch is padded up to the next captured size (a larger one
  runs unpadded); steps with prefill tokens run without graphs, unpadded.
- step time: each rank's mix through the step function, the slowest rank's time (lockstep), plus
  the framework's per-step CPU time on the critical path.

The request-level loop around instances is `serve.run` (a heap of timed events). It is written
with heapq rather than SimPy processes: an instance's only behaviour is "form a step, wait for
its time, apply it", which a sorted event list expresses directly and deterministically, and
simpy stays owned by `sim.engine` alone (the import-linter owner contract).

Decode progress is kept per rank, not per request: a rank counts its decode steps (`clock`), and
a decoding request's generated tokens are its offset plus that count, so a step costs O(ranks)
however many requests decode, plus O(log B) per request that finishes (a heap of finish clocks).
The decode batch's context sum is kept the same way. Inter-token latencies are recorded per rank
and step with a count (`ItlSamples`), not per token. The numbers are the ones a per-token loop
gives: the same integer sums, the same float subtractions (tests/test_serve_scheduler.py).

While an instance only decodes (no prompt to run, no preemption), its steps are kept per instance
instead (`Lockstep`): every rank with decoding requests decodes at every step, so a step is a
count, and a rank's own counters catch up when a request joins or finishes on it; step times come
from a look-ahead over the coming steps. The same run, float for float, as every step through the
ranks (`LOCKSTEP`, tests/test_serve_fast_paths.py).
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import numpy as np

from moesim.cluster.scenario import Batching, Scenario, Serving
from moesim.core.errors import MoesimError
from moesim.costs.feasibility import shortfall_text
from moesim.costs.memory import memory_ledger
from moesim.serve.load import Load, closed_loop_starts, open_loop_arrivals
from moesim.serve.step_function import StepFunction
from moesim.specs import precision


@dataclass(frozen=True)
class Policy:
    """The batching numbers one run uses (from the framework's `batching` record)."""

    framework: str
    max_running: int
    token_budget: int
    step_policy: str
    graph_sizes: tuple[int, ...]
    cpu_overhead_s: float
    overheads_from: str = "given"      # where cpu_overhead_s, request_overhead_s and kv_handoff_s come from
    # per request, what the client's TTFT holds beyond the engine's (HTTP, tokenisation, the first token's
    # detokenisation and streaming), counted on the first token's way back (`Clients`): a delay before the
    # queue would keep a fixed-length closed loop in waves the measured engines do not show
    # (validation.serving_load, "Where the request overhead falls")
    request_overhead_s: float = 0.0
    kv_admission: str = "whole_request"   # or "incremental" (module docstring)
    kv_handoff_s: float = 0.0   # disagg: from a request's KV arriving to its decode rank's queue: on TTFT
    layer_overhead_s: float = 0.0   # GPU time per step beyond the step model: per layer x the layers a rank runs
    prefill_scale: float = 1.0      # a step's prompt tokens take this x the step model's prefill time of as many
    mixed_prefill_scale: float = 1.0   # the same in a step that also decodes (a mixed step)

    @property
    def step_overhead_s(self) -> float:
        """What every engine step adds to its slowest rank's step-model time: the CPU time on the critical
        path and the framework's per-layer time over the layers a rank runs."""
        return self.cpu_overhead_s + self.layer_overhead_s

    def __post_init__(self):
        if self.step_policy == "mixed" and self.max_running > self.token_budget:
            # vLLM refuses max_num_seqs > max_num_batched_tokens: every decode token must fit a step
            raise MoesimError(f"{self.framework}: {self.max_running} running requests per rank cannot decode within a "
                              f"step budget of {self.token_budget} tokens", field="max_running_requests_per_rank",
                              fix="give a step token budget at least the running-request limit")

    @classmethod
    def of(cls, sc: Scenario) -> "Policy":
        b: Optional[Batching] = sc.framework.batching
        name = sc.input.runtime.framework
        if b is None:
            raise MoesimError(f"framework {name!r} has no continuous-batching policy in workloads/frameworks.yaml",
                              field="runtime.framework", fix="serve with a serving framework: vllm, sglang or trtllm")
        admission = b.kv_admission.value if b.kv_admission is not None else "whole_request"
        o = serving_overheads_ms(sc, name)
        return cls(framework=name, kv_admission=admission, max_running=b.max_running_requests_per_rank.value,
                   token_budget=b.step_token_budget.value, step_policy=b.step_policy.value,
                   graph_sizes=b.cuda_graph_batch_sizes.value.sizes(), cpu_overhead_s=o.step_cpu_ms / 1e3,
                   request_overhead_s=o.request_ms / 1e3, kv_handoff_s=o.handoff_ms / 1e3,
                   layer_overhead_s=o.layer_us * rank_layers(sc) / 1e6, prefill_scale=o.prefill_scale,
                   mixed_prefill_scale=o.mixed_prefill_scale,
                   overheads_from=o.source)

    def padded(self, batch: int) -> int:
        """The decode batch a CUDA graph runs: the next captured size, or `batch` beyond them."""
        i = bisect.bisect_left(self.graph_sizes, batch)
        return self.graph_sizes[i] if i < len(self.graph_sizes) else batch

    def to_json(self) -> dict:
        return {"framework": self.framework, "max_running_requests_per_rank": self.max_running,
                "step_token_budget": self.token_budget, "step_policy": self.step_policy,
                "cuda_graph_batch_sizes": list(self.graph_sizes), "step_cpu_overhead_s": self.cpu_overhead_s,
                "request_overhead_s": self.request_overhead_s, "kv_handoff_s": self.kv_handoff_s,
                "layer_overhead_s": self.layer_overhead_s, "prefill_scale": self.prefill_scale,
                "mixed_prefill_scale": self.mixed_prefill_scale,
                "overheads_from": self.overheads_from,
                "kv_admission": self.kv_admission}


SERVING_OVERHEADS = ("serving.step_cpu_ms", "serving.request_overhead_ms", "serving.disagg_handoff_ms",
                     "serving.layer_overhead_us", "serving.prefill_scale",
                     "serving.mixed_prefill_scale")


class ServingOverheads(NamedTuple):
    """A framework's serving overheads (`serving_overheads_ms`) and where they come from."""

    step_cpu_ms: float     # per engine step, CPU on the critical path
    request_ms: float      # per request, on the first token's way to the client
    handoff_ms: float      # per request, disaggregated prefill-to-decode hand-over
    layer_us: float        # per engine step and decoder layer a rank runs, GPU beyond the step model
    prefill_scale: float   # a step's prompt tokens, x the step model's prefill time of as many
    mixed_prefill_scale: float   # the same in a step that also decodes
    source: str


def moe_kernel_family(sc: Scenario) -> str:
    """Which MoE kernel library a scenario's experts run, and so which per-layer time its MoE layers pay
    (`serving.layer_overhead_us.<framework>.<family>`): "fp8" for FP8 and wider experts (Triton / DeepGEMM /
    CUTLASS FP8 block-scaled or BF16 grouped GEMMs), "w4a16" for 4-bit weights multiplied in BF16 (INT4
    weight-only, and FP4 checkpoints on GPUs without FP4 tensor cores: Marlin / Triton weight-only kernels),
    and the FP4 tensor-core formats by name, "nvfp4" (CUTLASS / FlashInfer W4A4 kernels, 16-element FP8
    scales) and "mxfp4" (FlashInfer / TensorRT-LLM MXFP4 kernels, 32-element E8M0 scales); the families
    carry different fixed costs per layer at small batch."""
    name = precision.canonical(sc.input.dtypes.expert_weights or sc.input.dtypes.weights)
    fmt = precision.get(name)
    if fmt.bits >= 8:
        return "fp8"
    return name if fmt.family == "fp4" else "w4a16"


def serving_overhead_names(framework: str, moe_kernels: str) -> tuple[str, str, str, str, str, str]:
    """The kernel-profile parameters of a framework's (CPU per step, per-request, hand-over, per-layer,
    prefill scale, mixed-step prefill scale) overheads for MoE kernels of family `moe_kernels`
    (`moe_kernel_family`): what `serving_overheads_ms` reads and what `moesim calibrate` fits
    (validation.serving_load)."""
    step_cpu, request, handoff, layer, prefill, mixed = (f"{prefix}.{framework}" for prefix in SERVING_OVERHEADS)
    return step_cpu, request, handoff, f"{layer}.{moe_kernels}", prefill, mixed


def rank_layers(sc: Scenario) -> int:
    """Decoder layers one rank runs in a step: the model's over its pipeline stages (rounded up)."""
    return -(-sc.model.num_hidden_layers // sc.plan.pp)


def serving_overheads_ms(sc: Scenario, framework: str) -> ServingOverheads:
    """The framework's serving overheads and where they come from: the kernel profile in force
    (`runtime.kernel_profile`, default the shipped fit of topologies/calibration/kernels.yaml;
    `topologies/kernels/serving.yaml` has their sourced defaults), so that serve and plan run with what
    `moesim validate` checks against the measured serving benchmarks."""
    from moesim.sim.provenance import kernel_profile
    profile = kernel_profile(sc)
    values = profile.values()
    names = serving_overhead_names(framework, moe_kernel_family(sc))
    missing = [n for n in names if n not in values]
    if missing:
        raise MoesimError(f"framework {framework!r} has no serving overheads ({', '.join(missing)})",
                          field="runtime.framework", fix="add them to topologies/kernels/serving.yaml with sources")
    fitted = [n for n in names if n in profile.fitted]
    source = (f"kernel profile {profile.name} ({'fitted' if len(fitted) == len(names) else 'partly fitted'})"
              if fitted else "sourced defaults (topologies/kernels/serving.yaml)")
    return ServingOverheads(*(values[n] for n in names), source)


def _variant(sc: Scenario, workload: Serving) -> Scenario:
    return sc.model_copy(update={"input": sc.input.model_copy(update={"workload": workload})})


# (resolved scenario as JSON, ISL, OSL, largest decode batch, prefill step) -> KV tokens per rank: a
# planner asks it of every point, and the points of one deployment share a few step sizes.
_KV_TOKENS: dict = {}
_KV_TOKENS_KEPT = 1024


def _ledger_kv_tokens(sc: Scenario, *, isl: int, osl: int, max_batch: int, prefill_tokens: int) -> int:
    """`kv_capacity_tokens` before its check of the longest request: the two ledgers' capacity, once
    per resolved scenario and step size in this process (a ledger depends on nothing else)."""
    key = (sc.model_dump_json(), isl, osl, max_batch, prefill_tokens)
    capacity = _KV_TOKENS.get(key)
    if capacity is not None:
        return capacity
    decode = _variant(sc, Serving(kind="serving", phase="decode", batch=max_batch, input_len=isl, output_len=osl))
    prefill = _variant(sc, Serving(kind="serving", phase="prefill", batch=1, input_len=isl, output_len=osl,
                                   prefill_chunk_tokens=prefill_tokens))
    ledgers = [memory_ledger(decode), memory_ledger(prefill)]
    capacity = min(lg.max_kv_tokens_per_gpu or 0 for lg in ledgers)
    if capacity <= 0:
        worst = min(ledgers, key=lambda lg: lg.headroom_bytes + lg.per_gpu["kv_cache_bytes"])
        raise MoesimError(f"no room for any KV cache: {shortfall_text(worst)}", field="memory",
                          fix="use more GPUs, a larger EP group or a smaller weights format")
    if len(_KV_TOKENS) >= _KV_TOKENS_KEPT:
        _KV_TOKENS.clear()
    _KV_TOKENS[key] = capacity
    return capacity


def kv_capacity_tokens(sc: Scenario, *, isl: int, osl: int, max_batch: int, prefill_tokens: int,
                       where: str = "one rank", longest: Optional[tuple[int, int]] = None) -> int:
    """KV tokens one attention-DP rank can hold, from the VRAM ledger (`costs.memory`): the
    framework's memory budget less weights, buffers, reserved memory and the activations of the
    largest step the run makes - a decode step of `max_batch` sequences or a prefill step of
    `prefill_tokens` tokens, whichever leaves less - in tokens of requests of ISL + OSL tokens
    (`max_kv_tokens_per_gpu`; a rank's TP GPUs each hold their share of every token). `longest`
    is the (ISL, OSL) of the run's longest request (default: `isl`, `osl`): it must fit alone."""
    capacity = _ledger_kv_tokens(sc, isl=isl, osl=osl, max_batch=max_batch, prefill_tokens=prefill_tokens)
    long_in, long_out = longest or (isl, osl)
    if capacity < long_in + long_out:
        raise MoesimError(f"a request of {long_in:,} + {long_out:,} tokens can never fit in the KV cache of {where} "
                          f"({capacity:,} tokens)", field="--isl/--osl",
                          fix="give shorter requests or more GPUs" + ("" if sc.input.dtypes.kv_cache == "fp8"
                                                                       else ", or an fp8 KV cache (--kv-dtype fp8)"))
    return capacity


# Order of events at the same instant in the serve event loops (`serve.run`, `serve.disagg`):
# a step's end first (a finished request frees its KV and its client sends the next request at
# that instant), then KV-transfer flows (a transfer that ends now lets its request join the next
# step), then arrivals, then idle instances form their next step, so a step sees everything that
# happened by its start.
STEP_END, FLOW, ARRIVAL, WAKE = 0, 1, 2, 3

# At most this many decode steps are planned at once (`Instance.stretch`): bounds the arrays of one
# stretch; a longer run of decode steps is simply more than one stretch.
STRETCH_STEPS = 2048
# ... and at least this many (measured: below ~8 steps the numpy arrays cost more than they save).
STRETCH_MIN = 8

# Pure decode steps are kept per instance, not per rank (`Lockstep`): the same run, faster. False
# runs every step through the per-rank path, the reference the tests compare it with.
LOCKSTEP = True

# From how many busy ranks `Instance.plan` prices a step with one numpy call instead of a call per
# rank (measured on this project's 2-core machines: the two cross near 16 ranks; same floats).
VECTOR_RANKS = 16


class EventQueue:
    """A run's events in time order; ties by kind (STEP_END, FLOW, ARRIVAL, WAKE), then in the order
    they were pushed, so the same inputs give the same run (both event loops use it)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._order = itertools.count()
        self._cancelled: set[int] = set()

    def push(self, t: float, kind: int, payload) -> int:
        """Add an event; returns its number, for `cancel`."""
        order = next(self._order)
        heapq.heappush(self._heap, (t, kind, order, payload))
        return order

    def cancel(self, order: int) -> None:
        """Take back the event `push` numbered `order`: as if it had never been pushed."""
        self._cancelled.add(order)

    def _drop_cancelled(self) -> None:
        heap, cancelled = self._heap, self._cancelled
        while heap and heap[0][2] in cancelled:
            cancelled.discard(heapq.heappop(heap)[2])

    def next_time(self) -> float:
        """When the next event happens (infinity when none is due): what `Instance.stretch` may
        plan up to."""
        if self._cancelled:
            self._drop_cancelled()
        return self._heap[0][0] if self._heap else math.inf

    def pop_next(self) -> Optional[tuple]:
        """The next event as (time, kind, number, payload), taken off the queue; None when none is
        left (one call per event: the event loops' per-event cost)."""
        if self._cancelled:
            self._drop_cancelled()
        return heapq.heappop(self._heap) if self._heap else None


class Clients:
    """The load's clients, as ARRIVAL events numbered in send order: a closed loop's C clients start
    at `closed_loop_starts` and send their next request when they have seen the last token of the one
    before; an open loop or trace sends at its arrival times. A request reaches the engine's queue as
    it is sent; the client sees its first token `first_token_delay_s` after the engine produced it
    (`Policy.request_overhead_s`: why there and not before the queue, in its comment) and its last
    token no earlier than that. Latencies are the client's: from `sent` to `first_seen` and `done`."""

    def __init__(self, events: EventQueue, load: Load, total: int, first_token_delay_s: float = 0.0) -> None:
        self.events, self.load, self.total, self.delay_s = events, load, total, first_token_delay_s
        self.issued = 0
        self.sent = np.full(total, math.nan)         # when each request was sent: its latencies count from here
        self.first_seen = np.full(total, math.nan)   # when its client saw the first token
        self.done = np.full(total, math.nan)         # when its client saw the last token

    def send(self, t: float) -> None:
        """Send the next request at `t`: it joins the engine's queue at once."""
        self.sent[self.issued] = t
        self.events.push(t, ARRIVAL, self.issued)
        self.issued += 1

    def first_token(self, req: int, t: float) -> None:
        """The engine produced `req`'s first token at `t`."""
        self.first_seen[req] = t + self.delay_s

    def start(self, fn: StepFunction, decode_ranks: int) -> None:
        """Every first send; `decode_ranks` share the closed loop's requests when they decode, which
        sets the batch of the one-request time the clients' starts are spread over."""
        load = self.load
        if load.mode == "closed":
            per_rank = -(-min(load.concurrency, self.total) // decode_ranks)
            for t0 in closed_loop_starts(load, fn.request_s(load.isl, load.osl, per_rank)).tolist():
                self.send(t0)
        else:
            for t in open_loop_arrivals(load).tolist():
                self.send(t)

    def finished(self, req: int, t: float) -> None:
        """The engine produced `req`'s last token at `t`: its client sees it then, or with the first token
        if that comes later, and in a closed loop sends its next request, while any remain."""
        done = self.done[req] = max(t, float(self.first_seen[req]))   # every request's first token comes first
        if self.load.mode == "closed" and self.issued < self.total:
            self.send(done)


def mark_prefill_start(plan: "StepPlan", prefill_start, now: float) -> None:
    """Record when each request's first prompt chunk starts (the end of its queueing)."""
    for chunks in plan.chunks:
        for req, _ in chunks:
            if prefill_start[req] != prefill_start[req]:   # NaN: not started yet
                prefill_start[req] = now


def check_finished_once(finishes: list) -> None:
    """Every request must finish exactly once; anything else is a scheduler bug, not bad input."""
    unfinished = [i for i, n in enumerate(finishes) if n != 1]
    if unfinished:
        raise AssertionError(f"{len(unfinished)} requests did not finish exactly once (first: {unfinished[0]})")


class ItlSamples:
    """Inter-token latencies as (value, count) pairs: every continuing decode request of a rank
    gets the same gap at a step, so a step adds one pair per rank, not one float per token."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.counts: list[int] = []

    def add(self, value: float, count: int) -> None:
        self.values.append(value)
        self.counts.append(count)

    def add_gaps(self, ends: list, count: int) -> None:
        """The gaps between consecutive step `ends` (each end minus the one before), `count` each."""
        if len(ends) > 1:
            self.values += [end - previous for previous, end in zip(ends, ends[1:])]
            self.counts += [count] * (len(ends) - 1)

    def array(self) -> np.ndarray:
        """Every gap, one per token (what the benchmark clients pool their percentiles over),
        sorted: their mean then does not depend on the order instances and steps reported them.
        The pairs are sorted before they are repeated (far fewer pairs than tokens): the same array."""
        values = np.asarray(self.values, dtype=float)
        order = np.argsort(values, kind="stable")
        return np.repeat(values[order], np.asarray(self.counts, dtype=np.int64)[order])


@dataclass
class Rank:
    """One attention-DP rank: its queue, its running requests and its KV cache.

    Decoding requests (module docstring): `clock` counts the rank's decode steps; a request that
    started decoding holds `offset[req]` = its ISL + tokens generated - clock at the start, so its
    context now is offset + clock, and `context_base` is the sum of the offsets; `finishing` is a
    heap of (clock at which it has its OSL tokens, join order, request)."""

    waiting: deque = field(default_factory=deque)
    prefilling: list = field(default_factory=list)   # request ids with prompt tokens left, FCFS
    decoding: dict = field(default_factory=dict)     # request ids generating tokens, in join order
    kv_reserved: int = 0
    kv_used: int = 0
    incoming: int = 0   # disaggregated decode: requests with KV reserved here, still in transfer
    clock: int = 0
    context_base: int = 0
    offset: dict = field(default_factory=dict)
    finishing: list = field(default_factory=list)
    fresh: list = field(default_factory=list)   # (request, its last token's time) joined since the last decode step
    joining: list = field(default_factory=list)  # (request, last token's time) whose KV arrived: decode from the next plan
    measured: int = 0                           # decoding requests counted in the statistics (past the warm-up)
    joined_as: dict = field(default_factory=dict)   # request -> its entry's join number in `finishing` (others are stale)
    last_decode_end: float = math.nan
    synced: int = 0   # decoding in lockstep (`Lockstep`): the instance's step count its counters were last brought to

    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding) + len(self.joining)


@dataclass
class StepPlan:
    """What one lockstep step does: per rank, prompt chunks [(request, tokens)] and decode requests."""

    chunks: list
    decodes: list
    duration_s: float
    # the step model's prefill time of the busiest rank's prompt tokens, which `Policy.prefill_scale` scales, or
    # `Policy.mixed_prefill_scale` in a step that also decodes (the step's time holds (scale - 1) x it beyond the step
    # model; the serving fit's closure reads it from the trace, by the step's category)
    prefill_s: float = 0.0
    # a run of pure decode steps (`Instance.stretch`): each one's end time; None for one step
    ends: Optional[list] = None
    # those steps are single steps, each planned at the end of the one before (`Lockstep.coast`)
    coast: bool = False

    @property
    def steps(self) -> int:
        return len(self.ends) if self.ends else 1

    def end_s(self, start_s: float) -> float:
        return self.ends[-1] if self.ends else start_s + self.duration_s

    def spans(self, start_s: float):
        """(start, end) of each step of the plan."""
        if not self.ends:
            return [(start_s, start_s + self.duration_s)]
        return list(zip([start_s] + self.ends[:-1], self.ends))


class _Same:
    """The same length for every request id (an `Instance` given one number for ISL or OSL)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __getitem__(self, req: int) -> int:
        return self.n


def _per_request(lengths) -> "Sequence[int] | _Same":
    if isinstance(lengths, (int, np.integer)):
        return _Same(lengths)
    return [int(n) for n in lengths]   # plain ints: the hot loop's arithmetic stays in Python ints


class Instance:
    """One engine instance: its ranks and the requests' progress, stepped by `serve.run`.

    Request state lives in the run's arrays (`prefilled`, `generated`), indexed by request id, so
    the instance holds only ids. `isl`/`osl` are every request's lengths, indexed by request id
    (`serve.load.request_lengths`), or one number for all.
    """

    def __init__(self, ranks: int, policy: Policy, fn: StepFunction, *, isl, osl, kv_capacity: int,
                 prefilled: list, generated: list, hold_finished_kv: bool = False, warmup: int = 0,
                 kv_admission: str = "whole_request"):
        self.ranks = [Rank() for _ in range(ranks)]
        self.policy, self.fn, self.kv_capacity = policy, fn, kv_capacity
        self.isl, self.osl = _per_request(isl), _per_request(osl)
        self.prefilled, self.generated = prefilled, generated
        # A disaggregated prefill instance keeps a finished request's KV until it has been sent
        # to the decode pool (SGLang frees it when the transfer reports success): `release`.
        self.hold_finished_kv = hold_finished_kv
        self.warmup = warmup
        self.incremental = kv_admission == "incremental"
        # pure decode steps kept per instance (`Lockstep`); not with preemption, which touches single ranks
        self.lockstep = LOCKSTEP and not self.incremental
        self._lockstep: Optional[Lockstep] = None
        self._dirty: list[int] = []   # ranks a request was queued on or joined since the last plan
        self.recompute: dict[int, int] = {}       # preempted request -> tokens it had generated (re-prefilled)
        self.last_token_at: dict[int, float] = {}  # preempted request -> when its last token came
        self.preemptions = 0
        self._joined = itertools.count()
        self.peak_kv_used = 0
        self.peak_kv_reserved = 0
        self.peak_running = 0

    def has_work(self) -> bool:
        return any(r.waiting or r.running for r in self.ranks)

    def enqueue(self, rank_index: int, req: int) -> None:
        """Request `req` reaches the queue of rank `rank_index` (it is admitted at a later plan)."""
        self.ranks[rank_index].waiting.append(req)
        self._dirty.append(rank_index)
        if self._lockstep is not None:
            self._lockstep.waiting += 1

    def totals(self) -> tuple[int, int, int]:
        """(running requests, waiting requests, KV tokens in use) summed over the ranks
        (`serve.run.Timeline`): a pass over the ranks, or while decoding in lockstep, its counts."""
        if self._lockstep is not None:
            return self._lockstep.totals()
        ranks = self.ranks
        return sum(r.running for r in ranks), sum(len(r.waiting) for r in ranks), sum(r.kv_used for r in ranks)

    def fresh_requests(self) -> list[int]:
        """Requests that started decoding since their rank's last decode step (they give their
        first decode token at the coming one)."""
        ranks = self.ranks if self._lockstep is None else [self.ranks[i] for i in self._lockstep.fresh_ranks]
        return [req for rank in ranks for req, _ in rank.fresh]

    def prompt_len(self, req: int) -> int:
        """Tokens request `req` must prefill: its prompt, plus what it had generated if it was preempted."""
        return self.isl[req] + self.recompute.get(req, 0)

    def _admit(self, rank: Rank) -> None:
        isl, osl = self.isl, self.osl
        while rank.waiting and rank.running < self.policy.max_running:
            head = rank.waiting[0]
            # incremental: the prompt and the slot of the token its prefill samples
            need = self.prompt_len(head) + 1 if self.incremental else isl[head] + osl[head]
            if rank.kv_reserved + need > self.kv_capacity:
                break
            rank.prefilling.append(rank.waiting.popleft())
            rank.kv_reserved += need
        self.peak_kv_reserved = max(self.peak_kv_reserved, rank.kv_reserved)
        self.peak_running = max(self.peak_running, rank.running)

    def _prompt_chunks(self, rank: Rank, budget: int) -> list:
        chunks = []
        for req in rank.prefilling:
            if budget <= 0:
                break
            take = min(self.prompt_len(req) - self.prefilled[req], budget)
            chunks.append((req, take))
            budget -= take
        return chunks

    def plan(self, now: float = math.nan) -> Optional[StepPlan]:
        """Admit what fits and form the next step; None when no rank has anything to run. `now`:
        the time the step starts (the last-token time of requests whose KV arrived meanwhile: a
        disaggregated decode worker streams the prefill's token as the request joins its batch).

        Every rank's mix goes through the step function in one call (`StepFunction.step_many`),
        the same floats as one call per rank. While decoding in lockstep (`Lockstep`), the step
        is formed there, without a pass over the ranks."""
        if self._lockstep is not None:
            plan = self._lockstep.plan(now)
            if plan is not None:
                return plan
            self._end_lockstep()
        self._dirty.clear()
        p = self.policy
        mixed, prefill_first = p.step_policy == "mixed", p.step_policy == "prefill_first"
        all_chunks, all_decodes = [], []
        batches, contexts, tokens_of = [], [], []
        for rank in self.ranks:
            if not (rank.joining or rank.waiting or rank.prefilling or rank.decoding):   # idle: nothing to run
                all_chunks.append([])
                all_decodes.append([])
                continue
            if rank.joining:   # arrived while a step ran: they join the batch now
                for req, last in rank.joining:
                    self._start_decoding(rank, req, now if math.isnan(last) else last)
                rank.joining.clear()
            if rank.waiting:
                self._admit(rank)
            if self.incremental and rank.decoding and rank.kv_reserved + len(rank.decoding) > self.kv_capacity:
                self._preempt_until_decodes_fit(rank)
            if prefill_first and rank.prefilling:
                chunks, decodes = self._prompt_chunks(rank, p.token_budget), []
            else:
                # every decoding request gives a token (SGLang's decode batch is every running request;
                # vLLM's decode tokens come first in the budget, the rest goes to prompt chunks)
                decodes = list(rank.decoding)
                chunks = self._prompt_chunks(rank, p.token_budget - len(decodes)) if mixed and rank.prefilling else []
            all_chunks.append(chunks)
            all_decodes.append(decodes)
            tokens = sum(n for _, n in chunks) if chunks else 0
            if not decodes and not tokens:
                continue
            batch = len(decodes)
            contexts.append(((rank.context_base + batch * rank.clock) / batch) if batch else 0.0)
            batches.append(p.padded(batch) if batch and not tokens else batch)
            tokens_of.append(tokens)
        if not batches:
            return None
        if len(batches) <= VECTOR_RANKS:   # a few ranks: plain calls beat numpy's per-call cost
            step = self.fn.step
            longest = max(step(b, c, n) for b, c, n in zip(batches, contexts, tokens_of))
        else:
            longest = float(self.fn.step_many(np.asarray(batches), np.asarray(contexts), np.asarray(tokens_of)).max())
        if longest <= 0.0:
            return None
        prompt = max(tokens_of)
        prefill = self.fn.prefill(prompt) if prompt else 0.0
        scale = p.mixed_prefill_scale if any(all_decodes) else p.prefill_scale   # a mixed step, or prompts alone
        return StepPlan(all_chunks, all_decodes, longest + p.step_overhead_s + (scale - 1.0) * prefill,
                        prefill_s=prefill)

    def coast(self, plan: StepPlan, now: float) -> StepPlan:
        """`plan` (a single pure decode step planned at `now`) and the ones after it as single steps
        planned together (`Lockstep.coast`); `plan` itself when not decoding in lockstep."""
        return self._lockstep.coast(plan, now) if self._lockstep is not None else plan

    def stretch(self, plan: StepPlan, now: float, horizon: float) -> StepPlan:
        """A pure decode step extended by the decode steps that follow it unchanged: while no rank
        has prompt tokens to run, nothing arrives (no event before `horizon`, the next event of
        the run) and no request finishes, every rank's batch stays the same and only its context
        grows by one a step, so the steps up to the first finish, or to the first step that starts
        at or after `horizon`, are known now. Their times are the ones step-by-step planning gives
        (the same contexts, the same `step_many` floats, the same sequential sums of durations);
        `apply` then applies them together. One plan instead of one per step: the event loop's
        cost follows events (arrivals, finishes), not tokens."""
        if self._lockstep is not None:
            return self._lockstep.stretch(plan, now, horizon)
        if any(plan.chunks) or not any(plan.decodes) or horizon - now < STRETCH_MIN * plan.duration_s:
            return plan   # (steps only get longer: fewer than STRETCH_MIN fit before the next event)
        busy = [(rank, len(d)) for rank, d in zip(self.ranks, plan.decodes) if d]
        if self.incremental:
            room = min(self._next_finish(rank) - rank.clock for rank, _ in busy)
        else:   # no preemption, no stale entries
            room = min(rank.finishing[0][0] - rank.clock for rank, _ in busy)
        if self.incremental:   # each step's tokens must fit: no preemption inside a stretch
            room = min(room, min((self.kv_capacity - rank.kv_reserved) // b for rank, b in busy))
        steps = min(room, STRETCH_STEPS)
        if horizon < math.inf:   # steps grow with context: the first step's time over-counts how many fit
            steps = min(steps, int((horizon - now) / plan.duration_s) + 2)
        if steps < STRETCH_MIN:   # a short run: planning it step by step costs less than the arrays
            return plan
        p = self.policy
        s = np.arange(steps, dtype=np.int64)[:, None]
        batch = np.array([b for _, b in busy], dtype=np.int64)[None, :]
        base = np.array([rank.context_base for rank, _ in busy], dtype=np.int64)[None, :]
        clock = np.array([rank.clock for rank, _ in busy], dtype=np.int64)[None, :]
        context = (base + batch * (clock + s)) / batch
        padded = np.array([p.padded(b) for _, b in busy], dtype=np.int64)
        times = self.fn.step_many(np.broadcast_to(padded, context.shape).ravel(), context.ravel(),
                                  np.zeros(context.size, dtype=np.int64)).reshape(context.shape)
        durations = times.max(axis=1) + p.step_overhead_s
        ends = np.cumsum(np.concatenate([[now], durations]))[1:]
        later = np.nonzero(ends >= horizon)[0]
        k = int(later[0]) + 1 if later.size else steps
        if k <= 1:
            return plan
        return StepPlan(plan.chunks, plan.decodes, plan.duration_s, ends=ends[:k].tolist())

    @staticmethod
    def _next_finish(rank: Rank) -> int:
        """The clock at which the rank's next decoding request has its output (stale heap entries
        of preempted requests dropped)."""
        heap = rank.finishing
        while rank.joined_as.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0]

    def _preempt_until_decodes_fit(self, rank: Rank) -> None:
        """vLLM V1's preemption by recompute (module docstring): free the most recently started
        decoding requests until one decode token for each of the others fits."""
        while rank.decoding and rank.kv_reserved + len(rank.decoding) > self.kv_capacity:
            req = next(reversed(rank.decoding))
            offset = rank.offset.pop(req)
            del rank.decoding[req], rank.joined_as[req]
            rank.context_base -= offset
            generated = offset - self.isl[req] + rank.clock
            self.generated[req] = generated
            held = self.isl[req] + generated
            rank.kv_used -= held
            rank.kv_reserved -= held
            last = rank.last_decode_end
            for i, (fresh_req, fresh_last) in enumerate(rank.fresh):
                if fresh_req == req:
                    last = fresh_last
                    del rank.fresh[i]
                    break
            self.last_token_at[req] = last
            if req >= self.warmup:
                rank.measured -= 1
            self.recompute[req] = generated
            self.prefilled[req] = 0
            rank.waiting.appendleft(req)
            self.preemptions += 1

    def _start_decoding(self, rank: Rank, req: int, last_token_s: float) -> None:
        """Request `req` (ISL + its generated tokens in the cache) decodes on `rank` from its next
        decode step; its last token came at `last_token_s` (its first inter-token gap starts there)."""
        offset = self.isl[req] + self.generated[req] - rank.clock
        rank.decoding[req] = None
        rank.offset[req] = offset
        rank.context_base += offset
        joined = next(self._joined)
        rank.joined_as[req] = joined
        heapq.heappush(rank.finishing, (self.osl[req] - self.generated[req] + rank.clock, joined, req))
        rank.fresh.append((req, last_token_s))
        if req >= self.warmup:
            rank.measured += 1

    def _decode_step(self, rank: Rank, decodes: list, now: float, on_token, itl: Optional[ItlSamples],
                     ends: Optional[list] = None) -> list:
        """One token for each of the rank's decoding requests (one per step of a stretched plan,
        whose steps end at `ends`); returns those now done, in join order."""
        batch, steps = len(decodes), (len(ends) if ends else 1)
        rank.clock += steps
        rank.kv_used += batch * steps
        if self.incremental:
            rank.kv_reserved += batch * steps
            self.peak_kv_reserved = max(self.peak_kv_reserved, rank.kv_reserved)
        first_end = ends[0] if ends else now
        if itl is None:   # a caller that wants every token
            for end in (ends or [now]):
                for req in decodes:
                    on_token(req, end)
        else:
            warmup, continuing = self.warmup, rank.measured
            for req, last in rank.fresh:
                if req >= warmup:
                    continuing -= 1
                    itl.add(first_end - last, 1)
            if continuing:
                itl.add(first_end - rank.last_decode_end, continuing)
            if rank.measured and steps > 1:
                for previous, end in zip(ends[:-1], ends[1:]):
                    itl.add(end - previous, rank.measured)
        rank.fresh = []
        rank.last_decode_end = now
        return self._pop_finished(rank)

    def _pop_finished(self, rank: Rank) -> list:
        """The rank's decoding requests that have their output at its clock, taken out of its batch,
        in join order."""
        done, heap = [], rank.finishing
        while heap and heap[0][0] <= rank.clock:
            _, joined, req = heapq.heappop(heap)
            if rank.joined_as.get(req) != joined:   # a preempted request's old entry
                continue
            del rank.joined_as[req]
            offset = rank.offset.pop(req)
            self.generated[req] = offset - self.isl[req] + rank.clock
            rank.context_base -= offset
            del rank.decoding[req]
            if req >= self.warmup:
                rank.measured -= 1
            done.append(req)
        return done

    def _count_kv(self, rank: Rank) -> None:
        """After a step: the peak KV use, and the guard that admission and preemption keep KV use
        within capacity."""
        self.peak_kv_used = max(self.peak_kv_used, rank.kv_used)
        if rank.kv_used > self.kv_capacity:
            raise AssertionError(f"KV use {rank.kv_used} exceeds capacity {self.kv_capacity}")

    def _free(self, rank: Rank, req: int) -> None:
        """A finished request's KV leaves its rank (unless the instance holds it for a transfer)."""
        if not self.hold_finished_kv:
            rank.kv_used -= self.isl[req] + self.generated[req]
            rank.kv_reserved -= self.isl[req] + (self.generated[req] if self.incremental else self.osl[req])

    def apply(self, plan: StepPlan, now: float, on_token, on_finish, itl: Optional[ItlSamples] = None) -> None:
        """Apply a finished step at time `now`: prompt chunks advance (a finished prompt gives the
        request its first token), decode requests get one token each, finished requests free
        their KV. `on_token(req, now)` is called for every first token, and for every decode token
        only when no `itl` collector is given (else the gaps go to `itl`, module docstring);
        `on_finish(req, now)` for every finished request. A pure decode step of a caller that
        collects gaps leaves the instance decoding in lockstep (`Lockstep`) from its next plan on."""
        if self._lockstep is not None:
            self._lockstep.apply(plan, now, on_finish, itl)
            return
        osl = self.osl
        for rank, chunks, decodes in zip(self.ranks, plan.chunks, plan.decodes):
            if not chunks and not decodes:   # an idle rank: only `_count_kv`'s check, when it could act
                if rank.kv_used > self.peak_kv_used or rank.kv_used > self.kv_capacity:
                    self._count_kv(rank)
                continue
            done = self._decode_step(rank, decodes, now, on_token, itl, plan.ends) if decodes else []
            for req, n in chunks:
                self.prefilled[req] += n
                rank.kv_used += n
                if self.prefilled[req] >= self.prompt_len(req):
                    rank.prefilling.remove(req)
                    rank.kv_used += 1   # the sampled token's slot, reserved at admission
                    if req in self.recompute:   # a preempted request's prefill again: its next token
                        del self.recompute[req]
                        self.generated[req] += 1
                        if itl is not None and req >= self.warmup:
                            itl.add(now - self.last_token_at.pop(req), 1)
                    else:
                        self.generated[req] = 1
                        on_token(req, now)
                    if self.generated[req] < osl[req]:
                        self._start_decoding(rank, req, now)
                    else:
                        done.append(req)
            self._count_kv(rank)
            for req in done:
                self._free(rank, req)
                on_finish(req, now)
        if self.lockstep and itl is not None and not any(plan.chunks) and any(plan.decodes) \
                and not any(r.waiting or r.prefilling for r in self.ranks):
            self._lockstep = Lockstep(self, now)

    def _end_lockstep(self) -> None:
        """Leave lockstep decoding: every rank's own counters up to date, the per-rank path again."""
        lock, self._lockstep = self._lockstep, None
        for i in lock.busy:
            lock.sync(self.ranks[i])

    # ------------------------------------------------------------ disaggregation (serve.disagg)
    def release(self, rank_index: int, req: int) -> None:
        """Free the KV finished request `req` held on a `hold_finished_kv` instance (its transfer is
        done); a finished request has generated its OSL tokens, so it held ISL + OSL tokens."""
        rank, need = self.ranks[rank_index], self.isl[req] + self.osl[req]
        rank.kv_used -= need
        rank.kv_reserved -= need

    def reserve(self, rank_index: int, req: int) -> bool:
        """Reserve request `req`'s whole KV (its ISL + OSL) on a decode rank before its KV is sent,
        as SGLang's decode PreallocQueue does; False while the rank is full (requests or KV)."""
        rank, need = self.ranks[rank_index], self.isl[req] + self.osl[req]
        if rank.running + rank.incoming >= self.policy.max_running or rank.kv_reserved + need > self.kv_capacity:
            return False
        rank.kv_reserved += need
        rank.incoming += 1
        self.peak_kv_reserved = max(self.peak_kv_reserved, rank.kv_reserved)
        return True

    def join(self, rank_index: int, req: int, last_token_s: float = math.nan) -> None:
        """A request whose KV has arrived joins the rank's decode batch (from its next step on);
        `last_token_s`: when its last token (the prefill's) reached the client."""
        rank = self.ranks[rank_index]
        rank.incoming -= 1
        rank.kv_used += self.isl[req] + self.generated[req]
        # not `_start_decoding` now: a step may be running, and its decode tokens are fixed (`plan`)
        rank.joining.append((req, last_token_s))
        # (in lockstep the rank's KV use may lag its steps here; it is counted again when it catches up)
        self.peak_kv_used = max(self.peak_kv_used, rank.kv_used)
        self.peak_running = max(self.peak_running, rank.running)
        self._dirty.append(rank_index)
        if self._lockstep is not None:
            self._lockstep.running += 1
            self._lockstep.kv += self.isl[req] + self.generated[req]

    def cancel(self, rank_index: int, req: int) -> None:
        """Drop the reservation of request `req`, which needs no decode step (a one-token output)."""
        rank = self.ranks[rank_index]
        rank.incoming -= 1
        rank.kv_reserved -= self.isl[req] + self.osl[req]


class Lockstep:
    """Pure decode steps of one instance, kept per instance instead of per rank: the fast path of
    `Instance.plan`/`stretch`/`apply` (a decode-only instance, a disaggregated decode worker above
    all, spends most of a run here).

    While no rank has a prompt to run, nothing is preempted and the caller collects gaps in
    `ItlSamples`, every rank with decoding requests decodes at every step, and a step changes only
    counters that grow by the same amount on every such (busy) rank. So `tick` counts the steps
    here, and a busy rank's own clock, KV use and last decode time catch up (`sync`) only when
    something happens on it - a request joins or finishes - or when the instance leaves lockstep.
    A step then costs O(1) however many ranks decode; a join or a finish costs O(its ranks) in
    Python and one numpy pass over the busy ranks for the coming step times.

    Step times come from a look-ahead over the coming steps (`_times`) that reads only grid points
    the step function has used already; a step that needs another point is evaluated when, and
    over the steps that, the per-rank path would evaluate it (its plan, or its stretch), which
    marks the point used. So the run, its events and `StepFunction.to_json` are the per-rank
    path's, float for float (tests/test_serve_fast_paths.py)."""

    # Step times read ahead at once after a join or a finish (which discard them): this many steps x
    # busy ranks (numpy's cost per call dominates below it), 16 to 64 steps, doubling each time
    # they run out (joins and finishes come every few dozen steps).
    LOOK_AHEAD = 1024

    def __init__(self, inst: Instance, now: float):
        self.inst = inst
        self.tick = 0                 # lockstep steps applied
        self.last_end = now           # when the last one ended: every busy rank's last decode step
        ranks = inst.ranks
        for rank in ranks:
            rank.synced = 0
        self.chunks = [[] for _ in ranks]
        self.decodes = [list(rank.decoding) for rank in ranks]
        self.fresh_ranks: list[int] = []   # ranks whose requests started decoding at this plan
        # per busy rank, in rank order: batch, CUDA-graph batch, context sum, clock at tick 0
        # (its clock at tick t is clock0 + t), tick of its next finish, measured requests
        self.busy: list[int] = []
        self._batch, self._padded, self._base, self._clock0, self._finish_at, self._measured = [], [], [], [], [], []
        self._update(range(len(ranks)))
        # `Instance.totals`: running, waiting, and KV use at `kv_tick` (it grows by `decoding` a step)
        self.running = sum(rank.running for rank in ranks)
        self.waiting = sum(len(rank.waiting) for rank in ranks)
        self.kv, self.kv_tick = sum(rank.kv_used for rank in ranks), 0

    def _update(self, changed) -> None:
        """After requests joined or finished on the ranks `changed` (in rank order): their entries
        in the busy ranks' lists, then the tick of the first finish, the measured and decoding
        requests, and no step times read ahead yet."""
        ranks, padded, busy = self.inst.ranks, self.inst.policy.padded, self.busy
        lists = (self._batch, self._padded, self._base, self._clock0, self._finish_at, self._measured)
        for i in changed:
            rank = ranks[i]
            k = bisect.bisect_left(busy, i)
            present = k < len(busy) and busy[k] == i
            if not rank.decoding:
                if present:
                    del busy[k]
                    for values in lists:
                        del values[k]
                continue
            b, clock0 = len(rank.decoding), rank.clock - rank.synced
            entry = (b, padded(b), rank.context_base, clock0, rank.finishing[0][0] - clock0, rank.measured)
            if present:
                for values, value in zip(lists, entry):
                    values[k] = value
            else:
                busy.insert(k, i)
                for values, value in zip(lists, entry):
                    values.insert(k, value)
        self.finish_tick = min(self._finish_at, default=self.tick)
        self.measured = sum(self._measured)
        self.decoding = sum(self._batch)
        self._from, self._times, self._arrays, self._sums = self.tick, [], None, None
        self._ahead = max(16, min(64, self.LOOK_AHEAD // max(len(busy), 1)))
        self._stopped = False   # the look-ahead stopped at a step that needs a grid point not used yet

    def sync(self, rank: Rank) -> None:
        """Bring a rank's clock, KV use and last decode time up to `tick` (a busy rank decoded at
        every step since it was last synced, one that is not busy at none)."""
        steps = self.tick - rank.synced
        rank.synced = self.tick
        if steps and rank.decoding:
            rank.clock += steps
            rank.kv_used += len(rank.decoding) * steps
            rank.last_decode_end = self.last_end
            self.inst._count_kv(rank)

    def totals(self) -> tuple[int, int, int]:
        return self.running, self.waiting, self.kv + self.decoding * (self.tick - self.kv_tick)

    def _settle_kv(self) -> None:
        """KV use counted up to `tick` before the number of decoding requests changes."""
        self.kv += self.decoding * (self.tick - self.kv_tick)
        self.kv_tick = self.tick

    # ------------------------------------------------------------ the per-rank path's three calls
    def plan(self, now: float) -> Optional[StepPlan]:
        """The next step: every busy rank decodes, with the requests that joined since the last
        plan. None when the instance must leave lockstep: a request is queued for a prompt (the
        per-rank path admits it), or no rank decodes."""
        if self.inst._dirty and not self._join(now):
            return None
        if not self.busy:
            return None
        return StepPlan(self.chunks, self.decodes, self._step_time(self.tick))

    def _join(self, now: float) -> bool:
        """Requests whose KV arrived join their ranks' batches, as `Instance.plan` takes them; False
        (nothing done) when a rank also has a request queued for its prompt."""
        inst, ranks = self.inst, self.inst.ranks
        dirty = sorted(set(inst._dirty))
        if any(ranks[i].waiting for i in dirty):
            return False
        inst._dirty.clear()
        self._settle_kv()
        decodes = list(self.decodes)
        for i in dirty:
            rank = ranks[i]
            self.sync(rank)
            for req, last in rank.joining:
                inst._start_decoding(rank, req, now if math.isnan(last) else last)
            rank.joining.clear()
            decodes[i] = list(rank.decoding)
        self.decodes = decodes
        self.fresh_ranks = dirty
        self._update(dirty)
        return True

    def stretch(self, plan: StepPlan, now: float, horizon: float) -> StepPlan:
        """`Instance.stretch`'s decision and arithmetic, from the step times read ahead."""
        duration = plan.duration_s
        if horizon - now < STRETCH_MIN * duration:
            return plan
        steps = min(self.finish_tick - self.tick, STRETCH_STEPS)
        if horizon < math.inf:
            steps = min(steps, int((horizon - now) / duration) + 2)
        if steps < STRETCH_MIN:
            return plan
        self._cover(self.tick + steps)
        start = self.tick - self._from
        ends = np.cumsum(np.concatenate([[now], self._times[start:start + steps]]))[1:]
        later = np.nonzero(ends >= horizon)[0]
        k = int(later[0]) + 1 if later.size else steps
        if k <= 1:
            return plan
        return StepPlan(plan.chunks, plan.decodes, duration, ends=ends[:k].tolist())

    def coast(self, plan: StepPlan, now: float) -> StepPlan:
        """The single step `plan` planned at `now` and the pure decode steps after it up to the next
        finish, each a single step planned at the end of the one before, as the caller has
        established the per-rank path would take them (`serve.disagg.Coasting`): their ends, with
        the arithmetic of single steps (each end the one before plus its step time). Only steps
        whose times are read ahead from used grid points: a later step would mark a point used
        that the per-rank path marks only if the run gets there. `plan` itself when no second
        step is known."""
        start = self.tick - self._from
        if len(self._times) - start < 2:
            self._read_ahead(self.tick + 2)
        times = self._times[start:start + self.finish_tick - self.tick]
        if len(times) < 2:
            return plan
        ends = list(itertools.accumulate(times, initial=now))[1:]   # each end the one before plus its step
        return StepPlan(plan.chunks, plan.decodes, plan.duration_s, ends=ends, coast=True)

    def apply(self, plan: StepPlan, now: float, on_finish, itl: ItlSamples) -> None:
        """`Instance.apply` of a lockstep plan: the gaps of its tokens (one pair per step for all
        continuing requests, one per request that has just joined), then the requests that have
        their output now, rank by rank as the per-rank path finishes them."""
        ends = plan.ends
        first_end = ends[0] if ends else now
        continuing = self.measured
        if self.fresh_ranks:
            ranks, warmup = self.inst.ranks, self.inst.warmup
            for i in self.fresh_ranks:
                rank = ranks[i]
                for req, last in rank.fresh:
                    if req >= warmup:
                        continuing -= 1
                        itl.add(first_end - last, 1)
                rank.fresh = []
            self.fresh_ranks = []
        if continuing:
            itl.add(first_end - self.last_end, continuing)
        if ends:
            if self.measured:
                itl.add_gaps(ends, self.measured)
            self.tick += len(ends)
        else:
            self.tick += 1
        self.last_end = now
        if self.tick == self.finish_tick:
            self._finish(now, on_finish)

    def _finish(self, now: float, on_finish) -> None:
        """The ranks that have a request finish at this step, in rank order: caught up, their
        finished requests out and their KV freed, `on_finish` for each (it may reserve KV on this
        instance's later ranks, which then have not given up theirs yet: as the per-rank path)."""
        inst, ranks = self.inst, self.inst.ranks
        self._settle_kv()
        finishing = [i for i, tick in zip(self.busy, self._finish_at) if tick == self.tick]
        decodes = list(self.decodes)
        for i in finishing:
            rank = ranks[i]
            self.sync(rank)
            kv = rank.kv_used
            done = inst._pop_finished(rank)
            decodes[i] = list(rank.decoding)
            for req in done:
                inst._free(rank, req)
                on_finish(req, now)
            self.running -= len(done)
            self.kv += rank.kv_used - kv
        self.decodes = decodes
        self._update(finishing)
        if not self.busy:
            inst._end_lockstep()

    # ------------------------------------------------------------ step times
    def _step_time(self, tick: int) -> float:
        k = tick - self._from
        if k >= len(self._times):
            self._cover(tick + 1)
        return self._times[k]

    def _cover(self, end: int) -> None:
        """Step times up to tick `end` (exclusive), whose steps from `tick` on the per-rank path
        evaluates now: read ahead from used grid points only, and where a step needs a point not
        used yet, the steps up to `end` from it evaluated as the per-rank path does (marking it)."""
        if end <= self._from + len(self._times):
            return
        self._read_ahead(end)
        known = self._from + len(self._times)
        if known < end:
            self._times += self._durations(known, end, used_only=False)
            self._stopped = False

    def _read_ahead(self, end: int) -> None:
        """Step times from the last one known up to tick `end` or further (up to the next finish),
        from used grid points only: up to the first step that needs another (`_stopped`)."""
        known = self._from + len(self._times)
        if self._stopped or known >= self.finish_tick:
            return
        ahead = self._durations(known, min(max(end, known + self._ahead), self.finish_tick), used_only=True)
        self._ahead *= 2
        self._stopped = math.isnan(sum(ahead))   # (step times are finite: only a missing point gives NaN)
        if self._stopped:
            ahead = ahead[:next(i for i, value in enumerate(ahead) if math.isnan(value))]
        self._times += ahead

    # Up to this many (busy ranks x steps) a look-ahead is read in plain Python (`_slowest_plain`):
    # measured, numpy's cost per call is larger below it.
    PLAIN_ELEMENTS = 128

    def _durations(self, start: int, end: int, *, used_only: bool) -> list[float]:
        """Step times (slowest busy rank plus the CPU overhead) of ticks [start, end), with the
        arithmetic of `Instance.stretch` (a busy rank's context sum at tick s is base + batch x
        (clock0 + s), the same integer however it is summed); NaN where `used_only` and a needed
        point is not used yet. The contexts are laid out a row per busy rank, so the slowest rank
        of each step is one pass over contiguous rows (`StepFunction.decode_rows_used`: the same
        floats as `decode_columns`, with fewer numpy calls; a maximum does not depend on order);
        a small look-ahead is read without numpy (`_slowest_plain`), the same floats."""
        overhead = self.inst.policy.step_overhead_s
        if used_only and len(self._batch) * (end - start) <= self.PLAIN_ELEMENTS:
            slowest = self._slowest_plain(start, end)
            if slowest is not None:
                return [time + overhead for time in slowest]
        if self._arrays is None:
            self._arrays = (np.array(self._batch, dtype=np.int64)[:, None], np.array(self._padded, dtype=np.int64),
                            np.array(self._context_sums(), dtype=np.int64)[:, None])
        batch, padded, sum0 = self._arrays
        context = (sum0 + batch * np.arange(start, end, dtype=np.int64)) / batch   # [busy ranks, steps]
        fn = self.inst.fn
        times = fn.decode_rows_used(padded, context) if used_only else None
        if times is None:
            times = fn.decode_columns(padded, context.T, used_only=used_only).T
        return (times.max(axis=0) + overhead).tolist()

    def _context_sums(self) -> list[int]:
        """Each busy rank's context sum at tick 0 (base + batch x clock0), kept until the next change."""
        if self._sums is None:
            self._sums = [base + b * clock0 for b, base, clock0 in zip(self._batch, self._base, self._clock0)]
        return self._sums

    def _slowest_plain(self, start: int, end: int) -> Optional[list[float]]:
        """`_durations`' slowest rank per step without the overhead, in plain Python floats
        (`StepFunction.decode_rows_slowest_used`: the same floats); None where it gives None."""
        return self.inst.fn.decode_rows_slowest_used(self._padded, self._context_sums(), self._batch, range(start, end))

__all__ = ["ARRIVAL", "FLOW", "Instance", "ItlSamples", "LOCKSTEP", "Lockstep", "Policy", "STEP_END", "StepPlan", "WAKE",
           "check_finished_once", "kv_capacity_tokens", "mark_prefill_start"]
