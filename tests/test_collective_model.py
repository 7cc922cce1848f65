"""The collective kernel model: NCCL's latency tables, algorithm/protocol choice, and fitted efficiencies."""
import pytest

from moesim.calibration.kernel_fit import bind
from moesim.calibration.kernel_params import definitions
from moesim.costs import nccl_tuning as nt
from moesim.validation.cases import Case, Skip
from moesim.validation.collective_model import forced_algorithm, prepare


def defaults():
    return {k: d.value for k, d in definitions().items()}


def case(size, op="all_reduce", metric="busbw_GBps", gpus=8, system="dgx-h100", id="c", notes="", source="src",
         **params):
    return Case(id=id, what="collective", system=system, gpus=gpus, metric=metric, measured=1.0, source=source,
                notes=notes, params={"op": op, "bytes": size, **params})


def test_nccl_ring_latency_is_tuning_cc():
    # v2.26.2 tuning.cc: baseLat ring LL 6.6 + 2(n-1) steps x hwLat NVLink ring LL 0.6
    assert nt.ring_latency_us("all_reduce", 8, 1, "ll") == pytest.approx(6.6 + 14 * 0.6)
    assert nt.ring_latency_us("all_gather", 8, 1, "simple") == pytest.approx(8.4 + 7 * 3.4)
    # across nodes the network steps cost more, and Simple all-reduce carries the plateau factor
    assert nt.ring_latency_us("all_reduce", 16, 2, "simple") > 1.4 * nt.ring_latency_us("all_reduce", 16, 1, "simple")
    assert nt.nvls_latency_us(1) == 25.0


def test_nccl_tree_latency_is_tuning_cc():
    # v2.26.2 tuning.cc: baseLat tree LL 6.8 + 2 x ((8 ranks per node - 1) x hwLat NVLink tree LL 0.6
    #                                              + log2i(8 nodes) x hwLat net tree LL 5.0)
    assert nt.tree_latency_us(64, 8, "ll") == pytest.approx(6.8 + 2 * (7 * 0.6 + 3 * 5.0))
    assert nt.tree_latency_us(16, 2, "simple") == pytest.approx(8.4 + 2 * (7 * 4.0 + 1 * 14.0))
    # and grows with log2 of the nodes where the ring grows with the ranks
    assert nt.tree_latency_us(512, 64, "ll") < nt.ring_latency_us("all_reduce", 512, 64, "ll") / 5


def test_nccl_picks_the_tree_for_small_all_reduces_across_nodes_and_the_ring_for_large():
    from moesim.costs.collective_kernels import choose
    from moesim.specs.hardware import load_system
    system, v = load_system("hgx-b200"), defaults()
    small, large = choose(system, 64, "all_reduce", 64 << 10, v), choose(system, 64, "all_reduce", 8 << 30, v)
    assert (small.algo, large.algo) == ("tree", "ring")
    # one node: no tree (NCCL's tree only pays across nodes; moesim models ring and NVLS there)
    assert choose(system, 8, "all_reduce", 64 << 10, v).algo in ("ring", "nvls")
    with pytest.raises(Exception, match="tree"):
        choose(system, 8, "all_reduce", 64 << 10, v, forced="tree")


def test_algorithm_forced_by_id_or_notes():
    assert forced_algorithm(case(1, id="x-allreduce-nvls-1MiB")) == "nvls"
    assert forced_algorithm(case(1, id="x-allreduce-ring-8GiB")) == "ring"
    assert forced_algorithm(case(1, id="x-allreduce-collnet-sharp")) == "collnet"
    assert forced_algorithm(case(1, id="x", notes="NCCL 2.26, NCCL_ALGO=RING")) == "ring"
    assert forced_algorithm(case(1, id="x-allreduce-8GiB")) is None


def test_small_messages_are_latency_bound_large_ones_bandwidth_bound():
    v = defaults()
    small, large = prepare(case(8192, metric="time_us"), None), prepare(case(8 << 30, metric="time_us"), None)
    assert small.protocol == "ll" and large.protocol == "simple"
    slow = dict(v, **{"collective.latency_scale": 2.0})
    assert small.predict(slow) / small.predict(v) > 1.8        # fixed cost dominates 8 KiB
    assert large.predict(slow) / large.predict(v) < 1.01       # and is negligible at 8 GiB


def test_busbw_rises_with_size_and_follows_link_efficiency():
    v = defaults()
    sizes = [8192, 1 << 20, 64 << 20, 8 << 30]
    bw = [prepare(case(s, id="h-ring"), None).predict(v) for s in sizes]
    assert bw == sorted(bw)
    t = prepare(case(8 << 30, id="h-ring"), None)
    faster = dict(v, **{"collective.nvlink_eff.hopper": 2 * v["collective.nvlink_eff.hopper"]})
    assert t.predict(faster) / t.predict(v) == pytest.approx(2.0, rel=0.02)
    assert "collective.nvlink_eff.blackwell" not in bind(t, v).params  # a per-arch parameter


def test_nvls_and_network_parameters_reach_their_cases():
    v = defaults()
    nvls = prepare(case(8 << 30, id="x-nvls"), None)
    assert nvls.algo == "nvls"
    up = dict(v, **{"collective.nvls_eff.hopper": 1.2 * v["collective.nvls_eff.hopper"]})
    assert nvls.predict(up) > 1.15 * nvls.predict(v)
    multi = prepare(case(8 << 30, gpus=16), None)
    assert multi.algo == "ring"  # NVLS needs one NVLink domain
    net = dict(v, **{"collective.net_eff.ib": 0.5 * v["collective.net_eff.ib"]})
    assert multi.predict(net) < 0.6 * multi.predict(v)


def test_launch_mode_from_source_rule():
    v = defaults()
    g8 = prepare(case(8192, metric="time_us", source="Azure/AI-benchmarking-guide, results"), None)
    mpi = prepare(case(8192, metric="time_us", source="someone's cluster"), None)
    assert g8.launches == 8 and mpi.launches == 1
    slow_launch = dict(v, **{"collective.launch_us": 20.0})
    assert g8.predict(slow_launch) == pytest.approx(160.0)  # host-bound: 8 launches per iteration
    assert mpi.predict(slow_launch) == pytest.approx(20.0)


def test_all_to_all_pays_per_remote_peer():
    v = defaults()
    t = prepare(case(8 << 20, op="all_to_all", gpus=64, system="dgx-h800", metric="time_us"), None)
    more = dict(v, **{"collective.p2p_peer_us": v["collective.p2p_peer_us"] + 1.0})
    assert t.predict(more) - t.predict(v) == pytest.approx(56.0)  # 56 peers on other nodes


def test_skips_with_reason():
    with pytest.raises(Skip, match="unknown collective op"):
        prepare(case(1024, op="broadcast"), None)
    with pytest.raises(Skip, match="metric"):
        prepare(case(1024, metric="GBps"), None)
    with pytest.raises(Skip, match="NVLS across NVLink domains"):
        prepare(case(1 << 30, gpus=16, id="x-nvls"), None)
