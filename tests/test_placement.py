"""Expert placement: slot invariants of every strategy, EPLB balance, conservation, bad input."""
import numpy as np
import pytest

from moesim.core.errors import MoesimError
from moesim.costs.placement import PLACEMENTS, Placement, eplb, gpu_load, imbalance, place, replica_bytes

ZIPF = 1.0 / np.arange(1, 257)  # Zipf(1.0) over 256 experts


def _loads():
    rng = np.random.default_rng(7)
    return {"uniform": np.ones(256), "zipf": ZIPF, "random": rng.random(256), "zeros": np.zeros(256)}


def _cases():
    for name in PLACEMENTS:
        for redundant in ([0, 64] if name == "eplb" else [0]):
            for n_gpus, per_node in [(64, 8), (8, 8), (16, 4), (4, 8)]:
                yield name, redundant, n_gpus, per_node


@pytest.mark.parametrize("name,redundant,n_gpus,per_node", list(_cases()))
def test_every_expert_placed_and_slots_equal(name, redundant, n_gpus, per_node):
    for load in _loads().values():
        p = PLACEMENTS[name](load, n_gpus, redundant, per_node)
        assert p.n_slots == 256 + redundant and p.redundant == redundant
        assert set(p.slot_expert.tolist()) == set(range(256))
        assert p.slot_expert.dtype == p.slot_gpu.dtype == np.int32 and not p.slot_gpu.flags.writeable
        assert np.all(np.bincount(p.slot_gpu, minlength=n_gpus) == p.slots_per_gpu)
        # CSR form agrees with replicas() and with slot_expert
        ptr, slots = p.expert_slot_ptr, p.expert_slots
        assert ptr[0] == 0 and ptr[-1] == p.n_slots and np.all(np.diff(ptr) >= 1)
        assert np.array_equal(np.sort(slots), np.arange(p.n_slots))
        for e in (0, 1, 255):
            r = p.replicas(e)
            assert np.all(np.diff(r) > 0) and np.all(p.slot_expert[r] == e)
        # conservation: the load placed equals the load given
        assert gpu_load(p, load).sum() == pytest.approx(load.sum())


def test_contiguous_and_round_robin_layout():
    p = PLACEMENTS["contiguous"](ZIPF, 64, 0, 8)
    assert p.slot_gpu[p.expert_slots].tolist() == [e // 4 for e in range(256)]
    p = PLACEMENTS["round_robin"](ZIPF, 64, 0, 8)
    assert p.slot_gpu[p.expert_slots].tolist() == [e % 64 for e in range(256)]


def test_eplb_uniform_is_perfect():
    p = eplb(np.ones(256), 64, 0, 8)
    assert imbalance(gpu_load(p, np.ones(256))) == 1.0


@pytest.mark.parametrize("n_gpus,redundant", [(64, 64), (32, 32)])
def test_eplb_beats_contiguous_on_zipf(n_gpus, redundant):
    contiguous = imbalance(gpu_load(PLACEMENTS["contiguous"](ZIPF, n_gpus, 0, 8), ZIPF))
    plain = imbalance(gpu_load(eplb(ZIPF, n_gpus, 0, 8), ZIPF))
    redundant_ = imbalance(gpu_load(eplb(ZIPF, n_gpus, redundant, 8), ZIPF))
    assert redundant_ < contiguous and plain <= contiguous
    assert redundant_ <= plain
    assert redundant_ < 1.1


def test_eplb_replicates_hottest_and_spreads_copies():
    p = eplb(ZIPF, 64, 64, 8)
    counts = p.replica_counts
    assert counts[0] == counts.max() and np.all(np.diff(counts) <= 0)  # Zipf: hotter never fewer
    for e in np.flatnonzero(counts > 1):
        gpus = p.slot_gpu[p.replicas(e)]
        assert len(set(gpus.tolist())) == gpus.size  # no GPU holds two copies of one expert


def test_eplb_hierarchical_nodes_equal_and_balanced():
    p = eplb(ZIPF, 64, 64, 8)
    node = p.slot_gpu // 8
    assert np.all(np.bincount(node, minlength=8) == p.n_slots // 8)
    node_load = np.bincount(np.arange(64) // 8, weights=gpu_load(p, ZIPF))
    assert imbalance(node_load) < 1.01


def test_deterministic():
    for name in PLACEMENTS:
        redundant = 64 if name == "eplb" else 0
        a = PLACEMENTS[name](ZIPF, 64, redundant, 8)
        b = PLACEMENTS[name](ZIPF.copy(), 64, redundant, 8)
        assert a == b and hash(a) == hash(b)
    assert PLACEMENTS["contiguous"](ZIPF, 64, 0, 8) != PLACEMENTS["round_robin"](ZIPF, 64, 0, 8)


def test_replica_bytes():
    assert replica_bytes(eplb(ZIPF, 32, 32, 8), 1e6) == 1e6
    assert replica_bytes(eplb(ZIPF, 64, 0, 8), 1e6) == 0.0
    assert replica_bytes(eplb(ZIPF, 64, 64, 8), 2.0) == 2.0


def test_bad_input():
    with pytest.raises(MoesimError, match="experts.redundant") as err:
        eplb(ZIPF, 64, 32, 8)  # 288 slots over 64 GPUs
    assert "64" in err.value.fix
    with pytest.raises(MoesimError, match="experts.redundant"):
        PLACEMENTS["contiguous"](np.ones(250), 64, 0, 8)
    for name in ("contiguous", "round_robin"):
        with pytest.raises(MoesimError, match="placement.*eplb:R"):
            PLACEMENTS[name](ZIPF, 64, 64, 8)
    with pytest.raises(MoesimError, match="one of: contiguous, round_robin, eplb"):
        place("random", ZIPF, 64, 0, 8)
    with pytest.raises(MoesimError, match="expert_load"):
        eplb(-ZIPF, 64, 0, 8)
    with pytest.raises(ValueError):
        Placement(n_gpus=2, n_experts=2, slot_expert=(0, 0), slot_gpu=(0, 1))  # expert 1 missing
