"""Continuous batching on one engine instance, as the serving framework's defaults run it.

An engine instance is one expert-parallel group: `(ep x etp) / tp` attention-DP ranks that step
in lockstep (every MoE layer's all-to-all joins them), each with its own running requests and KV
cache. The policy is data with sources (`workloads/frameworks.yaml`, `batching`):

- admission: a waiting request joins its rank when fewer than `max_running_requests_per_rank`
  run there and the rank's KV cache can hold the whole request (its own ISL + OSL tokens, reserved at
  admission, first come first served; the head of the queue blocks the rest). Reserving the full
  length means a running request can always grow, so nothing is preempted in this increment;
  frameworks admit more optimistically and preempt (a later increment).
- step composition per rank: `mixed` (vLLM V1): every decoding request gives one token, prompt
  chunks fill what is left of `step_token_budget`; `prefill_first` (SGLang): a rank with prompt
  tokens to process runs a prefill step of up to `step_token_budget` tokens, else a decode step.
  Prompts are taken first come first served and the last one is chunked to fit.
- CUDA graphs: a decode-only step's batch is padded up to the next captured size (a larger one
  runs unpadded); steps with prefill tokens run without graphs, unpadded.
- step time: each rank's mix through the step function, the slowest rank's time (lockstep), plus
  the framework's per-step CPU time on the critical path.

The request-level loop around instances is `serve.run` (a heap of timed events). It is written
with heapq rather than SimPy processes: an instance's only behaviour is "form a step, wait for
its time, apply it", which a sorted event list expresses directly and deterministically, and
simpy stays owned by `sim.engine` alone (the import-linter owner contract).
"""
from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from moesim.cluster.scenario import Batching, Scenario, Serving
from moesim.core.errors import MoesimError
from moesim.costs.feasibility import shortfall_text
from moesim.costs.memory import memory_ledger
from moesim.serve.load import Load, closed_loop_starts, open_loop_arrivals
from moesim.serve.step_function import StepFunction


@dataclass(frozen=True)
class Policy:
    """The batching numbers one run uses (from the framework's `batching` record)."""

    framework: str
    max_running: int
    token_budget: int
    step_policy: str
    graph_sizes: tuple[int, ...]
    cpu_overhead_s: float
    cpu_overhead_published: bool

    @classmethod
    def of(cls, sc: Scenario) -> "Policy":
        b: Optional[Batching] = sc.framework.batching
        name = sc.input.runtime.framework
        if b is None:
            raise MoesimError(f"framework {name!r} has no continuous-batching policy in workloads/frameworks.yaml",
                              field="runtime.framework", fix="serve with a serving framework: vllm or sglang")
        overhead = b.step_cpu_overhead_s.value
        return cls(framework=name, max_running=b.max_running_requests_per_rank.value,
                   token_budget=b.step_token_budget.value, step_policy=b.step_policy.value,
                   graph_sizes=b.cuda_graph_batch_sizes.value.sizes(), cpu_overhead_s=overhead or 0.0,
                   cpu_overhead_published=overhead is not None)

    def padded(self, batch: int) -> int:
        """The decode batch a CUDA graph runs: the next captured size, or `batch` beyond them."""
        i = bisect.bisect_left(self.graph_sizes, batch)
        return self.graph_sizes[i] if i < len(self.graph_sizes) else batch

    def to_json(self) -> dict:
        return {"framework": self.framework, "max_running_requests_per_rank": self.max_running,
                "step_token_budget": self.token_budget, "step_policy": self.step_policy,
                "cuda_graph_batch_sizes": list(self.graph_sizes), "step_cpu_overhead_s": self.cpu_overhead_s}


def _variant(sc: Scenario, workload: Serving) -> Scenario:
    return sc.model_copy(update={"input": sc.input.model_copy(update={"workload": workload})})


def kv_capacity_tokens(sc: Scenario, *, isl: int, osl: int, max_batch: int, prefill_tokens: int,
                       where: str = "one rank", longest: Optional[tuple[int, int]] = None) -> int:
    """KV tokens one attention-DP rank can hold, from the VRAM ledger (`costs.memory`): the
    framework's memory budget less weights, buffers, reserved memory and the activations of the
    largest step the run makes - a decode step of `max_batch` sequences or a prefill step of
    `prefill_tokens` tokens, whichever leaves less - in tokens of requests of ISL + OSL tokens
    (`max_kv_tokens_per_gpu`; a rank's TP GPUs each hold their share of every token). `longest`
    is the (ISL, OSL) of the run's longest request (default: `isl`, `osl`): it must fit alone."""
    decode = _variant(sc, Serving(kind="serving", phase="decode", batch=max_batch, input_len=isl, output_len=osl))
    prefill = _variant(sc, Serving(kind="serving", phase="prefill", batch=1, input_len=isl, output_len=osl,
                                   prefill_chunk_tokens=prefill_tokens))
    ledgers = [memory_ledger(decode), memory_ledger(prefill)]
    capacity = min(lg.max_kv_tokens_per_gpu or 0 for lg in ledgers)
    if capacity <= 0:
        worst = min(ledgers, key=lambda lg: lg.headroom_bytes + lg.per_gpu["kv_cache_bytes"])
        raise MoesimError(f"no room for any KV cache: {shortfall_text(worst)}", field="memory",
                          fix="use more GPUs, a larger EP group or a smaller weights format")
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


class EventQueue:
    """A run's events in time order; ties by kind (STEP_END, FLOW, ARRIVAL, WAKE), then in the order
    they were pushed, so the same inputs give the same run (both event loops use it)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._order = itertools.count()

    def push(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._order), payload))

    def pop(self) -> tuple:
        t, kind, _, payload = heapq.heappop(self._heap)
        return t, kind, payload

    def __bool__(self) -> bool:
        return bool(self._heap)


class Clients:
    """The load's clients, as ARRIVAL events numbered in send order: a closed loop's C clients start
    at `closed_loop_starts` and send their next request when one finishes; an open loop or trace
    sends at its arrival times."""

    def __init__(self, events: EventQueue, load: Load, total: int) -> None:
        self.events, self.load, self.total = events, load, total
        self.issued = 0

    def send(self, t: float) -> None:
        self.events.push(t, ARRIVAL, self.issued)
        self.issued += 1

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

    def finished(self, t: float) -> None:
        """A request finished: in a closed loop its client sends the next one, while any remain."""
        if self.load.mode == "closed" and self.issued < self.total:
            self.send(t)


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


@dataclass
class Rank:
    """One attention-DP rank: its queue, its running requests and its KV cache."""

    waiting: deque = field(default_factory=deque)
    prefilling: list = field(default_factory=list)   # request ids with prompt tokens left, FCFS
    decoding: list = field(default_factory=list)     # request ids generating tokens
    kv_reserved: int = 0
    kv_used: int = 0
    incoming: int = 0   # disaggregated decode: requests with KV reserved here, still in transfer

    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)


@dataclass
class StepPlan:
    """What one lockstep step does: per rank, prompt chunks [(request, tokens)] and decode requests."""

    chunks: list
    decodes: list
    duration_s: float


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
                 prefilled: list, generated: list, hold_finished_kv: bool = False):
        self.ranks = [Rank() for _ in range(ranks)]
        self.policy, self.fn, self.kv_capacity = policy, fn, kv_capacity
        self.isl, self.osl = _per_request(isl), _per_request(osl)
        self.prefilled, self.generated = prefilled, generated
        # A disaggregated prefill instance keeps a finished request's KV until it has been sent
        # to the decode pool (SGLang frees it when the transfer reports success): `release`.
        self.hold_finished_kv = hold_finished_kv
        self.busy = False
        self.peak_kv_used = 0
        self.peak_kv_reserved = 0
        self.peak_running = 0

    def has_work(self) -> bool:
        return any(r.waiting or r.running for r in self.ranks)

    def _admit(self, rank: Rank) -> None:
        isl, osl = self.isl, self.osl
        while rank.waiting and rank.running < self.policy.max_running:
            head = rank.waiting[0]
            need = isl[head] + osl[head]
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
            take = min(self.isl[req] - self.prefilled[req], budget)
            chunks.append((req, take))
            budget -= take
        return chunks

    def plan(self) -> Optional[StepPlan]:
        """Admit what fits and form the next step; None when no rank has anything to run."""
        p = self.policy
        all_chunks, all_decodes, longest = [], [], 0.0
        for rank in self.ranks:
            self._admit(rank)
            if p.step_policy == "prefill_first" and rank.prefilling:
                chunks, decodes = self._prompt_chunks(rank, p.token_budget), []
            else:
                # SGLang's decode batch is every running request; vLLM's decode tokens share the budget
                decodes = list(rank.decoding) if p.step_policy == "prefill_first" else rank.decoding[:p.token_budget]
                chunks = self._prompt_chunks(rank, p.token_budget - len(decodes)) if p.step_policy == "mixed" else []
            all_chunks.append(chunks)
            all_decodes.append(decodes)
            tokens = sum(n for _, n in chunks)
            if not decodes and not tokens:
                continue
            batch = len(decodes)
            isl, generated = self.isl, self.generated
            context = (sum(isl[r] + generated[r] for r in decodes) / batch) if batch else 0.0
            if batch and not tokens:
                batch = p.padded(batch)
            longest = max(longest, self.fn.step(batch, context, tokens))
        if longest <= 0.0:
            return None
        return StepPlan(all_chunks, all_decodes, longest + p.cpu_overhead_s)

    def apply(self, plan: StepPlan, now: float, on_token, on_finish) -> None:
        """Apply a finished step at time `now`: prompt chunks advance (a finished prompt gives the
        request its first token), decode requests get one token each, finished requests free
        their KV. `on_token(req, now)` and `on_finish(req, now)` record what happened."""
        isl, osl = self.isl, self.osl
        for rank, chunks, decodes in zip(self.ranks, plan.chunks, plan.decodes):
            done = []
            for req in decodes:
                self.generated[req] += 1
                rank.kv_used += 1
                on_token(req, now)
                if self.generated[req] >= osl[req]:
                    done.append(req)
            for req, n in chunks:
                self.prefilled[req] += n
                rank.kv_used += n
                if self.prefilled[req] >= isl[req]:
                    rank.prefilling.remove(req)
                    self.generated[req] = 1
                    rank.kv_used += 1
                    on_token(req, now)
                    if osl[req] > 1:
                        rank.decoding.append(req)
                    else:
                        done.append(req)
            self.peak_kv_used = max(self.peak_kv_used, rank.kv_used)
            if rank.kv_used > self.kv_capacity:  # cannot happen with full reservation; a guard for later policies
                raise AssertionError(f"KV use {rank.kv_used} exceeds capacity {self.kv_capacity}")
            for req in done:
                if req in rank.decoding:
                    rank.decoding.remove(req)
                if not self.hold_finished_kv:
                    rank.kv_used -= isl[req] + self.generated[req]
                    rank.kv_reserved -= isl[req] + osl[req]
                on_finish(req, now)

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

    def join(self, rank_index: int, req: int) -> None:
        """A request whose KV has arrived joins the rank's decode batch (from its next step on)."""
        rank = self.ranks[rank_index]
        rank.incoming -= 1
        rank.kv_used += self.isl[req] + self.generated[req]
        rank.decoding.append(req)
        self.peak_kv_used = max(self.peak_kv_used, rank.kv_used)
        self.peak_running = max(self.peak_running, rank.running)

    def cancel(self, rank_index: int, req: int) -> None:
        """Drop the reservation of request `req`, which needs no decode step (a one-token output)."""
        rank = self.ranks[rank_index]
        rank.incoming -= 1
        rank.kv_reserved -= self.isl[req] + self.osl[req]


__all__ = ["ARRIVAL", "FLOW", "Instance", "Policy", "STEP_END", "StepPlan", "WAKE", "check_finished_once",
           "kv_capacity_tokens", "mark_prefill_start"]
