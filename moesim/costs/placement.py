"""Expert placement: which physical slot on which GPU holds each logical expert (+ redundant copies).

A placement has `S = n_experts + redundant` physical slots, `S / n_gpus` on every GPU. Slots are
numbered GPU by GPU (slot s lives on GPU `s // slots_per_gpu`), as DeepSeek's EPLB numbers its
physical experts (`phy2log`, github.com/deepseek-ai/EPLB). Strategies are same-signature functions
in `PLACEMENTS`, `(expert_load[E], n_gpus, redundant, gpus_per_node) -> Placement`:

- `contiguous`: expert e on GPU `e // (E / n_gpus)` (vLLM/SGLang default EP layout).
- `round_robin`: expert e on GPU `e % n_gpus`.
- `eplb`: DeepSeek's Expert-Parallel Load Balancer: replicate the hottest experts, then pack
  replicas greedily onto the least-loaded GPU; hierarchical (nodes, then GPUs inside each node)
  when the GPUs span several whole nodes.

`contiguous` and `round_robin` place no redundant experts (redundant must be 0). Each expert's
load is split evenly over its replicas, matching the even replica choice of the traffic kernels
(`moesim.kernels.traffic`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from pydantic import ConfigDict, field_validator, model_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record


class Placement(Record):
    """Physical slots -> (logical expert, GPU), as read-only int32 arrays ready for the kernels.

    Equality compares the arrays' contents, so two placements built alike compare equal.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    n_gpus: int
    n_experts: int
    slot_expert: np.ndarray  # int32[S]
    slot_gpu: np.ndarray     # int32[S]

    @field_validator("slot_expert", "slot_gpu", mode="before")
    @classmethod
    def _int32_read_only(cls, value):
        array = np.array(value, dtype=np.int32).reshape(-1)
        array.flags.writeable = False
        return array

    @model_validator(mode="after")
    def _consistent(self) -> "Placement":
        s = self.slot_expert.size
        if self.n_gpus < 1 or self.n_experts < 1 or self.slot_gpu.size != s:
            raise ValueError("need n_gpus >= 1, n_experts >= 1 and one GPU per slot")
        expert, gpu = self.slot_expert, self.slot_gpu
        if s and (expert.min() < 0 or expert.max() >= self.n_experts or gpu.min() < 0 or gpu.max() >= self.n_gpus):
            raise ValueError("slot expert or GPU out of range")
        if np.bincount(expert, minlength=self.n_experts).min() < 1:
            raise ValueError("every expert needs at least one slot")
        per_gpu = np.bincount(gpu, minlength=self.n_gpus)
        if per_gpu.min() != per_gpu.max():
            raise ValueError(f"GPUs hold unequal slot counts {per_gpu.min()}..{per_gpu.max()}")
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return (self.n_gpus, self.n_experts) == (other.n_gpus, other.n_experts) \
            and np.array_equal(self.slot_expert, other.slot_expert) and np.array_equal(self.slot_gpu, other.slot_gpu)

    def __hash__(self) -> int:
        return hash((self.n_gpus, self.n_experts, self.slot_expert.tobytes(), self.slot_gpu.tobytes()))

    @property
    def n_slots(self) -> int:
        return int(self.slot_expert.size)

    @property
    def redundant(self) -> int:
        return self.n_slots - self.n_experts

    @property
    def slots_per_gpu(self) -> int:
        return self.n_slots // self.n_gpus

    @property
    def replica_counts(self) -> np.ndarray:
        """int64[E]: number of slots (replicas) of each expert."""
        return np.bincount(self.slot_expert, minlength=self.n_experts)

    @property
    def expert_slot_ptr(self) -> np.ndarray:
        """int32[E+1]: CSR row pointer; expert e's slots are `expert_slots[ptr[e]:ptr[e+1]]`."""
        ptr = np.zeros(self.n_experts + 1, dtype=np.int32)
        np.cumsum(self.replica_counts, out=ptr[1:])
        return ptr

    @property
    def expert_slots(self) -> np.ndarray:
        """int32[S]: slots grouped by expert, ascending slot index inside each expert."""
        return np.argsort(self.slot_expert, kind="stable").astype(np.int32)

    def replicas(self, expert: int) -> np.ndarray:
        """int32[r]: the slots holding `expert`, ascending."""
        ptr = self.expert_slot_ptr
        return self.expert_slots[ptr[expert]:ptr[expert + 1]]


def _check(expert_load: np.ndarray, n_gpus: int, redundant: int, gpus_per_node: int) -> np.ndarray:
    load = np.asarray(expert_load, dtype=np.float64)
    if load.ndim != 1 or load.size < 1 or not np.all(np.isfinite(load)) or load.min() < 0:
        raise MoesimError(f"expert load must be a non-empty 1-D array of finite non-negative numbers, "
                          f"got shape {load.shape}", field="expert_load",
                          fix="pass one load value per logical expert")
    if n_gpus < 1:
        raise MoesimError(f"expert-parallel GPU count must be positive, got {n_gpus}", field="parallel.ep",
                          fix="use ep >= 1")
    if gpus_per_node < 1:
        raise MoesimError(f"GPUs per node must be positive, got {gpus_per_node}", field="gpus_per_node",
                          fix="use the system's GPUs per node")
    if redundant < 0:
        raise MoesimError(f"redundant experts must be >= 0, got {redundant}", field="experts.redundant",
                          fix="use 0 or more")
    slots = load.size + redundant
    if slots % n_gpus:
        pad = (-load.size) % n_gpus
        raise MoesimError(f"{load.size} experts + {redundant} redundant = {slots} slots do not divide "
                          f"evenly over {n_gpus} GPUs", field="experts.redundant",
                          fix=f"set experts.redundant to {pad} (or more, in steps of {n_gpus})")
    return load


def _no_redundant(name: str, redundant: int) -> None:
    if redundant:
        raise MoesimError(f"'{name}' places no redundant experts, got {redundant}", field="experts.placement",
                          fix="use eplb:R to place redundant experts, or set experts.redundant to 0")


def _by_gpu(gpu_of_expert: np.ndarray, n_gpus: int) -> Placement:
    """A placement with one slot per expert, slots numbered GPU by GPU, experts ascending."""
    order = np.lexsort((np.arange(gpu_of_expert.size), gpu_of_expert))
    return Placement(n_gpus=n_gpus, n_experts=gpu_of_expert.size,
                     slot_expert=order, slot_gpu=gpu_of_expert[order])


def contiguous(expert_load: np.ndarray, n_gpus: int, redundant: int, gpus_per_node: int) -> Placement:
    """Expert e on GPU e // (E / n_gpus): the default EP layout of vLLM, SGLang and Megatron."""
    load = _check(expert_load, n_gpus, redundant, gpus_per_node)
    _no_redundant("contiguous", redundant)
    return _by_gpu(np.arange(load.size) // (load.size // n_gpus), n_gpus)


def round_robin(expert_load: np.ndarray, n_gpus: int, redundant: int, gpus_per_node: int) -> Placement:
    """Expert e on GPU e % n_gpus: neighbouring (often co-activated) experts land apart."""
    load = _check(expert_load, n_gpus, redundant, gpus_per_node)
    _no_redundant("round_robin", redundant)
    return _by_gpu(np.arange(load.size) % n_gpus, n_gpus)


def replicate(expert_load: np.ndarray, n_slots: int) -> np.ndarray:
    """int64[E] replica counts: start at 1 each, then give one more replica, slot by slot, to the
    expert with the highest load per replica (EPLB `replicate_experts`; ties -> lowest id)."""
    counts = np.ones(expert_load.size, dtype=np.int64)
    for _ in range(n_slots - expert_load.size):
        counts[np.argmax(expert_load / counts)] += 1
    return counts


def balanced_packing(weights: np.ndarray, items: np.ndarray, n_packs: int,
                     avoid_same_item: bool) -> np.ndarray:
    """int64[n]: pack index of each weighted item, each pack taking exactly n / n_packs items.

    EPLB `balanced_packing`: items by weight descending (stable, so ties keep their order), each
    to the least-loaded pack that still has room (ties -> lowest pack). With `avoid_same_item`,
    a pack already holding a replica of the same expert is skipped while another pack has room,
    so redundant copies never waste a slot next to each other (our addition to EPLB).
    """
    n = weights.size
    per_pack = n // n_packs
    pack_load = np.zeros(n_packs)
    pack_count = np.zeros(n_packs, dtype=np.int64)
    held: dict[int, set[int]] = {}
    pack_of = np.empty(n, dtype=np.int64)
    for i in np.argsort(-weights, kind="stable"):
        free = pack_count < per_pack
        if avoid_same_item:
            fresh = free.copy()
            fresh[list(held.get(int(items[i]), ()))] = False
            if fresh.any():
                free = fresh
        pack = int(np.argmin(np.where(free, pack_load, np.inf)))
        pack_of[i] = pack
        pack_load[pack] += weights[i]
        pack_count[pack] += 1
        held.setdefault(int(items[i]), set()).add(pack)
    return pack_of


def eplb(expert_load: np.ndarray, n_gpus: int, redundant: int, gpus_per_node: int) -> Placement:
    """DeepSeek EPLB (github.com/deepseek-ai/EPLB): replicate hot experts, then pack replicas.

    Hierarchical when the GPUs span several whole nodes (n_gpus > gpus_per_node, divisible):
    replicas are first packed onto nodes (equal slots per node, balanced node load), then onto the
    GPUs of each node; otherwise packed onto GPUs directly. EPLB's hierarchical mode packs expert
    *groups* onto nodes first for group-limited routing; moesim's routing has no groups, so nodes
    take replicas and the node level only balances the load each node's NICs carry.
    """
    load = _check(expert_load, n_gpus, redundant, gpus_per_node)
    n_slots = load.size + redundant
    counts = replicate(load, n_slots)
    items = np.repeat(np.arange(load.size), counts)
    weights = load[items] / counts[items]
    if n_gpus > gpus_per_node and n_gpus % gpus_per_node == 0:
        n_nodes = n_gpus // gpus_per_node
        node = balanced_packing(weights, items, n_nodes, avoid_same_item=False)
        gpu = np.empty(n_slots, dtype=np.int64)
        for nd in range(n_nodes):
            mine = np.flatnonzero(node == nd)
            gpu[mine] = nd * gpus_per_node + balanced_packing(weights[mine], items[mine], gpus_per_node,
                                                              avoid_same_item=True)
    else:
        gpu = balanced_packing(weights, items, n_gpus, avoid_same_item=True)
    order = np.lexsort((items, gpu))
    return Placement(n_gpus=n_gpus, n_experts=load.size,
                     slot_expert=items[order], slot_gpu=gpu[order])


PlacementFn = Callable[[np.ndarray, int, int, int], Placement]
PLACEMENTS: dict[str, PlacementFn] = {"contiguous": contiguous, "round_robin": round_robin, "eplb": eplb}


def place(strategy: str, expert_load: np.ndarray, n_gpus: int, redundant: int, gpus_per_node: int) -> Placement:
    """Look a strategy up by its YAML key and run it; an unknown key lists the valid ones."""
    if strategy not in PLACEMENTS:
        raise MoesimError(f"unknown placement '{strategy}'", field="experts.placement",
                          fix=f"use one of: {', '.join(PLACEMENTS)}")
    return PLACEMENTS[strategy](expert_load, n_gpus, redundant, gpus_per_node)


def gpu_load(placement: Placement, expert_load: np.ndarray) -> np.ndarray:
    """float64[G]: load each GPU serves, each expert's load split evenly over its replicas."""
    load = np.asarray(expert_load, dtype=np.float64)
    experts = placement.slot_expert
    per_slot = load[experts] / placement.replica_counts[experts]
    return np.bincount(placement.slot_gpu, weights=per_slot, minlength=placement.n_gpus)


def imbalance(gpu_load: np.ndarray) -> float:
    """max / mean of per-GPU load (1.0 = perfect balance; 1.0 when there is no load at all)."""
    mean = float(np.mean(gpu_load))
    return float(np.max(gpu_load)) / mean if mean > 0 else 1.0


def replica_bytes(placement: Placement, bytes_per_expert: float) -> float:
    """Bytes each GPU spends on redundant copies: (S - E) / G x bytes_per_expert.

    Every GPU holds the same slot count, so one number serves every GPU; it is what `memory`
    charges beyond the E / ep experts of a placement without redundancy ((E + R) / ep slots).
    """
    return placement.redundant / placement.n_gpus * float(bytes_per_expert)


def parse_placement(text: str, redundant: int, *, field: str = "placement") -> tuple[str, int]:
    """`contiguous`, `round_robin`, `eplb` (redundant slots from the scenario) or `eplb:R`."""
    name, _, arg = text.partition(":")
    if name not in PLACEMENTS:
        raise MoesimError(f"unknown placement {text!r}", field=field,
                          fix=f"use one of: {', '.join(sorted(PLACEMENTS))} (eplb:R for R redundant experts)")
    if arg:
        if name != "eplb" or not arg.isdigit():
            raise MoesimError(f"cannot read {text!r}", field=field, fix="write eplb:R with R >= 0 redundant experts")
        redundant = int(arg)
    return name, redundant
