"""Traffic kernels vs their NumPy twins (exact), conservation, DeepEP internode rules, determinism."""
import numpy as np
import pytest

from moesim.costs.placement import PLACEMENTS
from moesim.kernels import traffic
from moesim.kernels import traffic_reference as ref

# (n_tokens, n_experts, k, n_gpus, gpus_per_node, redundant)
SHAPES = [
    (500, 16, 2, 8, 8, 0),      # 1 node
    (700, 32, 4, 16, 8, 16),    # 2 nodes, replicas
    (1000, 256, 8, 64, 8, 64),  # 8 nodes, DeepSeek-V3 shape with replicas
    (300, 12, 3, 4, 2, 4),      # 2 nodes of 2
    (800, 256, 8, 128, 8, 0),   # 16 nodes, more GPUs than the 64-bit mask holds
    (0, 16, 2, 8, 4, 0),        # no tokens
]


def random_case(n_tokens, n_experts, k, n_gpus, gpus_per_node, redundant, seed=0, dropped=0.1):
    """Random routing (a `dropped` fraction of choices is -1) and a random valid placement
    (random replica counts, shuffled slots)."""
    rng = np.random.default_rng(seed)
    counts = np.ones(n_experts, dtype=np.int64)
    np.add.at(counts, rng.integers(0, n_experts, redundant), 1)
    slot_expert = rng.permutation(np.repeat(np.arange(n_experts), counts))
    slot_gpu = (np.arange(slot_expert.size) // (slot_expert.size // n_gpus)).astype(np.int32)
    ptr = np.zeros(n_experts + 1, dtype=np.int32)
    np.cumsum(counts, out=ptr[1:])
    slots = np.argsort(slot_expert, kind="stable").astype(np.int32)
    choices = rng.integers(0, n_experts, (n_tokens, k)).astype(np.int32)  # repeats allowed: exercises dedup
    choices[rng.random(choices.shape) < dropped] = -1
    token_gpu = rng.integers(0, n_gpus, n_tokens).astype(np.int32)
    return choices, token_gpu, ptr, slots, slot_gpu


def destinations(case, t):
    """The set of destination GPUs of token t, computed one token at a time in plain Python."""
    choices, _, ptr, slots, slot_gpu = case
    out = set()
    for e in choices[t][choices[t] >= 0]:
        r = ptr[e + 1] - ptr[e]
        out.add(int(slot_gpu[slots[ptr[e] + t % r]]))
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_kernels_equal_twins(shape, seed):
    n_gpus, per_node = shape[3], shape[4]
    case = random_case(*shape, seed=seed)
    got = traffic.dispatch_counts(*case, n_gpus)
    want = ref.dispatch_counts(*case, n_gpus)
    assert got.dtype == np.int64 and got.shape == (n_gpus, n_gpus)
    assert np.array_equal(got, want)
    rdma, nvl = traffic.internode_counts(*case, n_gpus, per_node)
    rdma_ref, nvl_ref = ref.internode_counts(*case, n_gpus, per_node)
    assert rdma.dtype == nvl.dtype == np.int64
    assert np.array_equal(rdma, rdma_ref) and np.array_equal(nvl, nvl_ref)


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_kernels_equal_twins_on_real_placements(name):
    rng = np.random.default_rng(3)
    load = rng.random(64)
    p = PLACEMENTS[name](load, 16, 16 if name == "eplb" else 0, 4)
    choices = rng.integers(0, 64, (2000, 6)).astype(np.int32)
    token_gpu = rng.integers(0, 16, 2000).astype(np.int32)
    case = (choices, token_gpu, p.expert_slot_ptr, p.expert_slots, p.slot_gpu)
    assert np.array_equal(traffic.dispatch_counts(*case, 16), ref.dispatch_counts(*case, 16))
    for a, b in zip(traffic.internode_counts(*case, 16, 4), ref.internode_counts(*case, 16, 4)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_both_dispatch_loops_agree(shape):
    case = random_case(*shape[:5], 0, seed=6)  # no replicas: both loops apply when n_gpus <= 64
    n_gpus = shape[3]
    single = traffic.single_gpu(*case[2:])
    general = traffic.dispatch_counts_general(case[0], case[1], single, *case[2:], n_gpus)
    assert np.array_equal(general, ref.dispatch_counts(*case, n_gpus))
    if n_gpus <= 64:
        assert np.array_equal(traffic.dispatch_counts_bitmask(case[0], case[1], single, n_gpus), general)


def test_dispatch_matches_python_sets():
    case = random_case(60, 12, 3, 4, 2, 4, seed=5)
    choices, token_gpu = case[0], case[1]
    pairs = {(t, g) for t in range(len(choices)) for g in destinations(case, t)}
    counts = traffic.dispatch_counts(*case, 4)
    assert counts.sum() == len(pairs)
    want = np.zeros((4, 4), dtype=np.int64)
    for t, g in pairs:
        want[token_gpu[t], g] += 1
    assert np.array_equal(counts, want)
    # per source GPU, the row sum is the sum over its tokens of their distinct destinations
    for src in range(4):
        assert counts[src].sum() == sum(len(destinations(case, t)) for t in np.flatnonzero(token_gpu == src))


def test_replicas_split_evenly():
    # one expert with 4 replicas on 4 GPUs: tokens 0..7 choose it; each replica gets 2 tokens
    ptr = np.array([0, 4], dtype=np.int32)
    slots = np.arange(4, dtype=np.int32)
    slot_gpu = np.arange(4, dtype=np.int32)
    choices = np.zeros((8, 1), dtype=np.int32)
    counts = traffic.dispatch_counts(choices, np.zeros(8, dtype=np.int32), ptr, slots, slot_gpu, 4)
    assert counts[0].tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_internode_rules(shape):
    n_tokens, _, _, n_gpus, per_node, _ = shape
    case = random_case(*shape, seed=2)
    token_gpu = case[1]
    rdma, nvl = traffic.internode_counts(*case, n_gpus, per_node)
    gpu = np.arange(n_gpus)
    node, local = gpu // per_node, gpu % per_node
    same_node = node[:, None] == node[None, :]
    same_local = local[:, None] == local[None, :]
    assert np.all(rdma[same_node] == 0) and np.all(rdma[~same_local] == 0)  # rails between nodes only
    assert np.all(nvl[~same_node] == 0) and np.all(np.diag(nvl) == 0)      # NVLink inside a node
    # every remote (token, GPU) pair is reached exactly once: a rail-peer landing or a forward
    rdma_want = np.zeros_like(rdma)
    nvl_want = np.zeros_like(nvl)
    landings = forwards = remote_pairs = 0
    for t in range(n_tokens):
        src = int(token_gpu[t])
        remote = [g for g in destinations(case, t) if node[g] != node[src]]
        remote_pairs += len(remote)
        for nd in {int(node[g]) for g in remote}:
            rail = nd * per_node + local[src]
            rdma_want[src, rail] += 1
            landings += rail in remote
        for g in remote:
            rail = node[g] * per_node + local[src]
            if g != rail:
                nvl_want[rail, g] += 1
                forwards += 1
    assert np.array_equal(rdma, rdma_want) and np.array_equal(nvl, nvl_want)
    assert landings + forwards == remote_pairs
    # the remote part of dispatch_counts is what the rails and forwards deliver
    dispatch = traffic.dispatch_counts(*case, n_gpus)
    assert dispatch[~same_node].sum() == remote_pairs == nvl.sum() + landings
    if n_gpus == per_node:
        assert rdma.sum() == 0 and nvl.sum() == 0


def test_combine_mirrors_dispatch():
    case = random_case(1000, 256, 8, 64, 8, 64, seed=4)
    dispatch = traffic.dispatch_counts(*case, 64)
    combine = dispatch.T  # experts' outputs go back along the same (token, GPU) pairs
    assert combine.sum() == dispatch.sum()  # tokens dispatched = tokens combined
    assert np.array_equal(combine.sum(axis=1), dispatch.sum(axis=0))  # a GPU returns what it got
    assert np.array_equal(combine.sum(axis=0), dispatch.sum(axis=1))


def test_deterministic():
    a = random_case(800, 32, 4, 16, 8, 16, seed=9)
    b = random_case(800, 32, 4, 16, 8, 16, seed=9)
    assert np.array_equal(traffic.dispatch_counts(*a, 16), traffic.dispatch_counts(*b, 16))
    first, again = traffic.internode_counts(*a, 16, 8), traffic.internode_counts(*a, 16, 8)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
