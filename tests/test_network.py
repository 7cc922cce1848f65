"""Max-min fair rates (kernel and NumPy twin) and event-driven flow completion times (moesim.costs.network)."""
from __future__ import annotations

import numpy as np
import pytest

from moesim.bench.maxmin_kernel import all_to_all_fabric, network_benchmark
from moesim.core.errors import MoesimError
from moesim.costs.network import Flows, collective_time, complete_flows, rate_segments, solve_rates
from moesim.kernels import maxmin, maxmin_reference

SOLVERS = [pytest.param(True, id="numba"), pytest.param(False, id="numpy")]


def csr(paths):
    ptr = np.concatenate([[0], np.cumsum([len(p) for p in paths])]).astype(np.int64)
    links = np.array([l for p in paths for l in p], dtype=np.int32)
    return ptr, links


def random_instance(seed, n_flows, n_links, max_len=6, empty_share=0.0):
    """Random capacities in [1, 100) and paths of 1..max_len distinct links (some empty if asked)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    capacity = rng.uniform(1.0, 100.0, n_links)
    lengths = rng.integers(1, min(max_len, n_links) + 1, n_flows)
    lengths[rng.random(n_flows) < empty_share] = 0
    paths = [rng.choice(n_links, size=k, replace=False) for k in lengths]
    return capacity, *csr(paths)


def link_loads(capacity, ptr, links, rates):
    flow_of = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    return np.bincount(links, weights=rates[flow_of], minlength=capacity.size)


def check_maxmin(capacity, ptr, links, rates, rtol=1e-9):
    """Shared validator: capacities hold, and every flow with links has a bottleneck: a saturated
    link on its path where no other flow gets more (the characterisation of max-min fairness,
    Bertsekas & Gallager, Data Networks, 6.5.2)."""
    loads = link_loads(capacity, ptr, links, rates)
    assert np.all(loads <= capacity * (1 + rtol)), "a link carries more than its capacity"
    flow_of = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    max_on_link = np.zeros(capacity.size)
    np.maximum.at(max_on_link, links, rates[flow_of])
    saturated = loads >= capacity * (1 - rtol)
    for f in range(ptr.size - 1):
        path = links[ptr[f]:ptr[f + 1]]
        if path.size == 0:
            assert rates[f] == np.inf
            continue
        ok = saturated[path] & (rates[f] >= max_on_link[path] * (1 - rtol))
        assert ok.any(), f"flow {f} at {rates[f]} has no bottleneck link"


# ---- hand-checked rates ----------------------------------------------------------------------

@pytest.mark.parametrize("use_numba", SOLVERS)
class TestHandChecked:
    def test_two_flows_share_one_link(self, use_numba):
        np.testing.assert_allclose(solve_rates([10.0], *csr([[0], [0]]), use_numba=use_numba), [5.0, 5.0])

    def test_classic_two_links(self, use_numba):
        # link A (10) carries f1, f2; link B (4) carries f2, f3: B bottlenecks f2 and f3 at 2, f1 takes 8
        rates = solve_rates([10.0, 4.0], *csr([[0], [0, 1], [1]]), use_numba=use_numba)
        np.testing.assert_allclose(rates, [8.0, 2.0, 2.0])

    def test_parking_lot(self, use_numba):
        # a long flow over links 0-1-2 (capacities 1, 2, 3) and one short flow per link: link 0
        # splits 0.5/0.5, then the short flows take what the long one leaves
        rates = solve_rates([1.0, 2.0, 3.0], *csr([[0, 1, 2], [0], [1], [2]]), use_numba=use_numba)
        np.testing.assert_allclose(rates, [0.5, 0.5, 1.5, 2.5])

    def test_parking_lot_equal_links(self, use_numba):
        rates = solve_rates([1.0] * 4, *csr([[0, 1, 2, 3], [0], [1], [2], [3]]), use_numba=use_numba)
        np.testing.assert_allclose(rates, [0.5] * 5)

    def test_flows_without_links_are_unlimited(self, use_numba):
        rates = solve_rates([6.0], *csr([[], [0], [], [0], [0]]), use_numba=use_numba)
        assert rates[0] == rates[2] == np.inf
        np.testing.assert_allclose(rates[[1, 3, 4]], [2.0, 2.0, 2.0])
        assert np.all(solve_rates([1.0], *csr([[], []]), use_numba=use_numba) == np.inf)
        assert solve_rates([1.0], *csr([]), use_numba=use_numba).shape == (0,)

    def test_zero_capacity_and_hairpin(self, use_numba):
        # a zero-capacity link stops its flows; a link crossed twice counts twice
        rates = solve_rates([0.0, 10.0, 9.0], *csr([[0, 1], [1], [2, 2], [2]]), use_numba=use_numba)
        np.testing.assert_allclose(rates, [0.0, 10.0, 3.0, 3.0])

    def test_unused_links_are_ignored(self, use_numba):
        # link 2 (3) bottlenecks the second flow before link 1 (7) fills; the first takes the rest
        np.testing.assert_allclose(solve_rates([1.0, 7.0, 3.0], *csr([[1], [1, 2]]), use_numba=use_numba),
                                   [4.0, 3.0])


# ---- max-min fairness on random instances, and the twin ---------------------------------------

@pytest.mark.parametrize("use_numba", SOLVERS)
@pytest.mark.parametrize("seed", range(6))
def test_random_rates_are_max_min_fair(seed, use_numba):
    capacity, ptr, links = random_instance(seed, 200, 50, empty_share=0.05)
    check_maxmin(capacity, ptr, links, solve_rates(capacity, ptr, links, use_numba=use_numba))


@pytest.mark.parametrize("seed", range(3))
def test_ties_are_max_min_fair(seed):
    """Integer capacities and few links give many links saturating at exactly the same level."""
    rng = np.random.Generator(np.random.PCG64(seed))
    capacity = rng.integers(1, 4, 12).astype(float)
    paths = [rng.choice(12, size=rng.integers(1, 4), replace=False) for _ in range(300)]
    ptr, links = csr(paths)
    rates = solve_rates(capacity, ptr, links)
    check_maxmin(capacity, ptr, links, rates)
    np.testing.assert_allclose(rates, solve_rates(capacity, ptr, links, use_numba=False), rtol=1e-9)


@pytest.mark.parametrize("n_flows, n_links, seed", [(10, 4, 0), (500, 30, 1), (3000, 400, 2), (50_000, 600, 3)])
def test_kernel_matches_twin(n_flows, n_links, seed):
    capacity, ptr, links = random_instance(seed, n_flows, n_links, empty_share=0.02)
    fast = maxmin.maxmin_rates(capacity, ptr, links)
    plain = maxmin_reference.maxmin_rates(capacity, ptr, links)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(plain))
    np.testing.assert_allclose(fast, plain, rtol=1e-9, atol=0)


def test_kernel_matches_twin_on_all_to_all():
    capacity, ptr, links, _ = all_to_all_fabric(256)
    fast = maxmin.maxmin_rates(capacity, ptr, links)
    np.testing.assert_allclose(fast, maxmin_reference.maxmin_rates(capacity, ptr, links), rtol=1e-9, atol=0)
    check_maxmin(capacity, ptr, links, fast)


def test_every_freezing_path_of_the_kernel():
    """Level 1 freezes 40% of the flows (inline decrements, scan mode kept), level 2 the rest
    (recount); a random instance then switches to the link->flow incidence at once."""
    paths = [[k // 40] for k in range(400)] + [[10 + k // 60, 20] for k in range(600)]
    capacity = np.array([1.0] * 10 + [1000.0] * 10 + [1e9])
    ptr, links = csr(paths)
    rates = maxmin.maxmin_rates(capacity, ptr, links)
    np.testing.assert_allclose(rates, [1 / 40] * 400 + [1000 / 60] * 600)
    np.testing.assert_array_equal(rates, maxmin_reference.maxmin_rates(capacity, ptr, links))
    capacity, ptr, links = random_instance(7, 2000, 300)
    np.testing.assert_allclose(maxmin.maxmin_rates(capacity, ptr, links),
                               maxmin_reference.maxmin_rates(capacity, ptr, links), rtol=1e-9)


def test_link_incidence_matches_twin():
    capacity, ptr, links = random_instance(4, 300, 40, empty_share=0.1)
    flows = np.array([5, 0, 299, 17, 18, 150], dtype=np.int64)
    for got, want in zip(maxmin.link_incidence(40, ptr, links, flows),
                         maxmin_reference.link_incidence(40, ptr, links, flows)):
        np.testing.assert_array_equal(got, want)


def test_all_to_all_rates_match_closed_form():
    # 16 GPUs in 2 nodes: a GPU's NIC carries its 8 inter-node flows, its NVLink its 7 intra-node ones
    capacity, ptr, links, params = all_to_all_fabric(16)
    rates = solve_rates(capacity, ptr, links)
    src, dst = np.divmod(np.arange(256), 16)
    src, dst = src[src != dst], dst[src != dst]
    intra = src // 8 == dst // 8
    np.testing.assert_allclose(rates[intra], 450e9 / 7)
    np.testing.assert_allclose(rates[~intra], 50e9 / 8)
    assert params["spines"] == 2


def test_solve_is_deterministic():
    capacity, ptr, links = random_instance(11, 5000, 200)
    first = solve_rates(capacity, ptr, links)
    np.testing.assert_array_equal(first, solve_rates(capacity, ptr, links))
    np.testing.assert_array_equal(first, solve_rates(capacity.copy(), ptr.copy(), links.copy()))


# ---- event-driven completion times ------------------------------------------------------------

S, C = 1e6, 1e9  # bytes, bytes/s


@pytest.mark.parametrize("use_numba", SOLVERS)
class TestCompletion:
    def test_single_flow(self, use_numba):
        flows = Flows.from_paths([[0]], S, start_s=0.5, latency_s=2e-6)
        np.testing.assert_allclose(complete_flows([C], flows, use_numba=use_numba), [0.5 + 2e-6 + S / C])

    def test_equal_flows_finish_together(self, use_numba):
        done = complete_flows([C], Flows.from_paths([[0], [0]], S), use_numba=use_numba)
        np.testing.assert_allclose(done, [2 * S / C] * 2)
        assert done[0] == done[1]

    def test_short_flow_frees_bandwidth_for_long(self, use_numba):
        short, long = 1e6, 5e6
        done = complete_flows([C], Flows.from_paths([[0], [0]], [short, long]), use_numba=use_numba)
        # both at C/2 until the short one ends (2 short / C), then the long one alone at C
        np.testing.assert_allclose(done, [2 * short / C, 2 * short / C + (long - short) / C])

    def test_staggered_starts(self, use_numba):
        t1 = 0.4 * S / C
        done = complete_flows([C], Flows.from_paths([[0], [0]], S, start_s=[0.0, t1]), use_numba=use_numba)
        first = t1 + 2 * (S - C * t1) / C  # alone for t1, then half the link
        np.testing.assert_allclose(done, [first, first + t1])  # B then has C t1 bytes left at full C

    def test_latency_delays_the_first_byte(self, use_numba):
        t1 = 0.4 * S / C  # same as staggered starts, with the delay as latency instead
        done = complete_flows([C], Flows.from_paths([[0], [0]], S, latency_s=[0.0, t1]), use_numba=use_numba)
        first = t1 + 2 * (S - C * t1) / C
        np.testing.assert_allclose(done, [first, first + t1])

    def test_instant_and_stuck_flows(self, use_numba):
        flows = Flows.from_paths([[0], [], [0], [1]], [0.0, 5e9, S, S], start_s=1.0, latency_s=[3e-6, 1e-6, 0, 0])
        done = complete_flows([C, 0.0], flows, use_numba=use_numba)
        np.testing.assert_allclose(done[:3], [1.0 + 3e-6, 1.0 + 1e-6, 1.0 + S / C])
        assert done[3] == np.inf  # a zero-capacity link never delivers

    def test_bytes_are_conserved(self, use_numba):
        capacity, ptr, links = random_instance(5, 120, 20, empty_share=0.05)
        rng = np.random.Generator(np.random.PCG64(5))
        flows = Flows(ptr, links, rng.uniform(0, 100, 120) * (rng.random(120) > 0.05),
                      rng.uniform(0, 3, 120), rng.uniform(0, 0.2, 120))
        done = complete_flows(capacity, flows, use_numba=use_numba)
        segments = rate_segments(capacity, flows, use_numba=use_numba)
        sent = np.zeros(120)
        last_end = np.full(120, -np.inf)
        ready = flows.start_s + flows.latency_s
        for seg in segments:
            assert seg.end_s >= seg.start_s
            np.add.at(sent, seg.flow_ids, seg.rates_Bps * (seg.end_s - seg.start_s))
            last_end[seg.flow_ids] = seg.end_s
            assert np.all(ready[seg.flow_ids] <= seg.start_s)  # no byte before the latency has passed
            sub = Flows(*_sub(ptr, links, seg.flow_ids), 1.0, 0.0, 0.0)
            check_maxmin(capacity, sub.flow_ptr, sub.flow_links, seg.rates_Bps)
        moving = (flows.size_bytes > 0) & (np.diff(ptr) > 0)
        np.testing.assert_allclose(sent[moving], flows.size_bytes[moving], rtol=1e-9)
        np.testing.assert_allclose(last_end[moving], done[moving], rtol=1e-12)
        np.testing.assert_allclose(done[~moving], ready[~moving])
        assert np.all(done >= ready)

    def test_collective_time(self, use_numba):
        flows = Flows.from_paths([[0], [0], [1]], S, start_s=[1.0, 1.0, 1.5])
        assert collective_time([C, C], flows, use_numba=use_numba) == pytest.approx(0.5 + S / C)
        assert collective_time([C], Flows.from_paths([], [])) == 0.0


def _sub(ptr, links, idx):
    return csr([links[ptr[f]:ptr[f + 1]] for f in idx])


def test_completion_kernel_matches_twin_and_is_deterministic():
    capacity, ptr, links = random_instance(9, 400, 40)
    rng = np.random.Generator(np.random.PCG64(9))
    flows = Flows(ptr, links, rng.uniform(1, 50, 400), rng.uniform(0, 1, 400), 1e-3)
    fast = complete_flows(capacity, flows)
    np.testing.assert_allclose(fast, complete_flows(capacity, flows, use_numba=False), rtol=1e-9)
    np.testing.assert_array_equal(fast, complete_flows(capacity, flows))


def test_all_to_all_completion_is_one_bottleneck_per_class():
    capacity, ptr, links, _ = all_to_all_fabric(32)
    flows = Flows(ptr, links, 1e6, 0.0, 5e-6)
    done = complete_flows(capacity, flows)
    n_inter = 32 - 8
    # inter-node flows share each NIC 24 ways (NVLink finishes first, never slowing them down)
    assert done.max() == pytest.approx(5e-6 + 1e6 * n_inter / 50e9, rel=1e-12)
    assert collective_time(capacity, flows) == done.max()


# ---- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, field", [
    (lambda: solve_rates([-1.0], *csr([[0]])), "capacity"),
    (lambda: solve_rates([np.nan], *csr([[0]])), "capacity"),
    (lambda: solve_rates([[1.0]], *csr([[0]])), "capacity"),
    (lambda: solve_rates([1.0], np.array([1, 2]), np.array([0], dtype=np.int32)), "flow_ptr"),
    (lambda: solve_rates([1.0], np.array([0, 2, 1]), np.array([0, 0], dtype=np.int32)), "flow_ptr"),
    (lambda: solve_rates([1.0], np.array([0.0, 1.0]), np.array([0], dtype=np.int32)), "flow_ptr"),
    (lambda: solve_rates([1.0], np.array([0, 2]), np.array([0], dtype=np.int32)), "flow_links"),
    (lambda: solve_rates([1.0], *csr([[1]])), "flow_links"),
    (lambda: solve_rates([1.0], np.array([0, 1]), np.array([-1])), "flow_links"),
    (lambda: Flows.from_paths([[0]], -5.0), "flows.size_bytes"),
    (lambda: Flows.from_paths([[0]], [1.0, 2.0]), "flows.size_bytes"),
    (lambda: Flows.from_paths([[0]], 1.0, latency_s=-1e-6), "flows.latency_s"),
    (lambda: Flows.from_paths([[0]], 1.0, start_s=np.inf), "flows.start_s"),
    (lambda: complete_flows([1.0], Flows.from_paths([[3]], 1.0)), "flow_links"),
    (lambda: complete_flows([1.0], "flows"), "flows"),
])
def test_bad_input_is_one_line_with_field_and_fix(call, field):
    with pytest.raises(MoesimError) as info:
        call()
    assert info.value.field == field
    assert info.value.fix
    assert "\n" not in str(info.value)


def test_benchmark_reports_each_size():
    out = network_benchmark(sizes=(8, 16), repeats=1)
    assert [row["gpus"] for row in out["network"]] == [8, 16]
    assert out["network"][1]["flows"] == 16 * 15
    assert all(row["solve_s"] > 0 and row["speedup_vs_numpy"] > 0 for row in out["network"])
