"""Cluster graphs, routes and the flat link table: structure of every built-in system, graph
conventions (ids, attributes), route arithmetic against the name-walking reference, latency
profiles against their measurements, custom topology files and their errors."""
from __future__ import annotations

import time

import networkx as nx
import numpy as np
import pytest

from moesim.cluster.links import path_latency
from moesim.cluster.topology import (LINK_KINDS, NODE_KINDS, build_cluster, check_connected, gpu_nodes, link_table,
                                     load_custom_topology, natural_key, route, routes)
from moesim.cluster.topology_files import load_fabric, load_profile
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.specs.hardware import Sourced, load_system, system_names


def sourced_values(record, prefix=""):
    for name in type(record).model_fields:
        value = getattr(record, name)
        if isinstance(value, Sourced):
            yield f"{prefix}{name}", value
        elif hasattr(type(value), "model_fields"):
            yield from sourced_values(value, f"{prefix}{name}.")


def all_pairs(n: int) -> np.ndarray:
    s, d = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([s.ravel(), d.ravel()], axis=1)


def kinds_on(graph, kind):
    return sorted((n for n, a in graph.nodes(data=True) if a["kind"] == kind), key=natural_key)


@pytest.fixture(scope="module")
def h100_16():
    graph = build_cluster(load_system("dgx-h100"), 16)
    return graph, link_table(graph)


# ------------------------------------------------------------------ data files

@pytest.mark.parametrize("name", system_names())
def test_every_system_has_a_sourced_profile(name):
    profile = load_profile(name)
    assert profile.id == name
    values = list(sourced_values(profile))
    assert len(values) >= 9
    for field, item in values:
        assert item.source.strip(), f"{name}: {field} has no source"


def test_fabric_defaults_are_sourced():
    fabric = load_fabric("rail-optimized")
    assert (fabric.switch_ports.value, fabric.leaf_down_ports.value) == (64, 32)
    assert "DS-ISCA" in fabric.switch_ports.source


def test_h800_hop_split_reproduces_ds_isca_table5():
    graph = build_cluster(load_system("dgx-h800"), 16)
    table = link_table(graph)
    measured = load_profile("dgx-h800").measured_64B_us
    assert path_latency(table, route(graph, table, 0, 1)) == pytest.approx(measured.nvlink.value * units.us)
    assert path_latency(table, route(graph, table, 0, 8)) == pytest.approx(measured.ib_same_leaf.value * units.us)
    assert path_latency(table, route(graph, table, 0, 9)) == pytest.approx(measured.ib_cross_leaf.value * units.us)


# ------------------------------------------------------------------ structure

def test_dgx_h100_two_nodes(h100_16):
    graph, _ = h100_16
    assert len(kinds_on(graph, "gpu")) == 16
    assert len(kinds_on(graph, "nic")) == 16
    assert kinds_on(graph, "nvswitch") == ["d0.nvsw0", "d1.nvsw0"]
    assert kinds_on(graph, "leaf") == [f"leaf{r}" for r in range(8)]
    assert kinds_on(graph, "host") == ["n0.host", "n1.host"]
    assert kinds_on(graph, "spine")
    assert gpu_nodes(graph) == [f"n{g // 8}.gpu{g % 8}" for g in range(16)]
    assert graph.nodes["d0.nvsw0"]["switch_chips"] == 4
    # rail r: NIC r of every node on leaf r
    for node in range(2):
        for r in range(8):
            assert graph.has_edge(f"n{node}.nic{r}", f"leaf{r}")
            assert graph.has_edge(f"n{node}.gpu{r}", f"n{node}.nic{r}")
    check_connected(graph)


def test_capacities_follow_the_specs(h100_16):
    graph, _ = h100_16
    assert graph.edges["n0.gpu0", "d0.nvsw0"]["capacity_Bps"] == 450e9
    assert graph.edges["n0.gpu0", "n0.nic0"]["capacity_Bps"] == 64e9
    assert graph.edges["n0.nic0", "leaf0"]["capacity_Bps"] == 50e9
    assert graph.edges["n0.gpu0", "n0.host"]["kind"] == "pcie"
    uplink = sum(graph.edges["leaf0", s]["capacity_Bps"] for s in kinds_on(graph, "spine"))
    assert uplink == pytest.approx(2 * 50e9)  # two attached nodes, non-blocking


def test_node_ids_readable_and_sorted(h100_16):
    graph, table = h100_16
    nodes = list(graph.nodes)
    assert nodes == sorted(nodes, key=natural_key)
    assert table.edges == sorted(table.edges, key=lambda e: (natural_key(e[0]), natural_key(e[1])))
    for node, attrs in graph.nodes(data=True):
        assert attrs["kind"] in NODE_KINDS
    assert natural_key("n2.gpu1") < natural_key("n10.gpu0")


@pytest.mark.parametrize("name", system_names())
def test_edge_attributes_and_duplex(name):
    system = load_system(name)
    graph = build_cluster(system, 2 * system.domain_gpus)
    for u, v, attrs in graph.edges(data=True):
        assert attrs["capacity_Bps"] > 0 and attrs["latency_s"] >= 0 and attrs["kind"] in LINK_KINDS
        assert graph.has_edge(v, u) and graph.edges[v, u] == attrs
    check_connected(graph)
    table = link_table(graph)
    assert len(table) == graph.number_of_edges() and table.capacity_Bps.dtype == np.float64


def test_missing_attribute_raises(h100_16):
    graph = h100_16[0].copy()
    del graph.edges["n0.gpu0", "d0.nvsw0"]["latency_s"]
    with pytest.raises(MoesimError, match="latency_s"):
        link_table(graph)
    graph = h100_16[0].copy()
    graph.edges["n0.gpu0", "d0.nvsw0"]["kind"] = "ethernet"
    with pytest.raises(MoesimError, match="kind"):
        link_table(graph)


def test_gb200_one_rack_is_all_nvlink():
    graph = build_cluster(load_system("gb200-nvl72"), 72)
    table = link_table(graph)
    assert kinds_on(graph, "nvswitch") == ["d0.nvsw0"]
    assert graph.nodes["d0.nvsw0"]["switch_chips"] == 18
    assert not kinds_on(graph, "nic") and not kinds_on(graph, "spine")
    assert gpu_nodes(graph)[:5] == ["n0.gpu0", "n0.gpu1", "n0.gpu2", "n0.gpu3", "n1.gpu0"]
    assert graph.edges["n0.gpu0", "n0.host"]["kind"] == "c2c"
    ptr, links = routes(graph, table, all_pairs(72))
    assert {table.kind[i] for i in links} == {"nvlink"}
    lengths = np.diff(ptr)
    assert set(lengths[all_pairs(72)[:, 0] != all_pairs(72)[:, 1]]) == {2}


def test_gb200_two_racks_cross_over_ib():
    graph = build_cluster(load_system("gb200-nvl72"), 144)
    table = link_table(graph)
    assert kinds_on(graph, "nvswitch") == ["d0.nvsw0", "d1.nvsw0"]
    kinds = [table.kind[i] for i in route(graph, table, 0, 72)]
    assert kinds == ["pcie", "ib", "ib", "pcie"]  # tray-local GPU 0 of both racks share rail 0
    kinds = [table.kind[i] for i in route(graph, table, 5, 100)]
    assert "ib" in kinds and "nvlink" not in kinds
    assert {table.kind[i] for i in route(graph, table, 5, 70)} == {"nvlink"}
    check_connected(graph)


def test_oversubscription_halves_leaf_uplinks():
    system = load_system("dgx-h100")
    over = system.model_copy(update={"spec": system.spec.model_copy(update={
        "scale_out": system.spec.scale_out.model_copy(update={
            "oversubscription": system.spec.scale_out.oversubscription.model_copy(update={"value": 2.0})})})})

    def uplink(graph):
        leaf = kinds_on(graph, "leaf")[0]
        return sum(graph.edges[leaf, s]["capacity_Bps"] for s in kinds_on(graph, "spine"))

    for gpus in (16, 512):
        assert uplink(build_cluster(over, gpus)) == pytest.approx(uplink(build_cluster(system, gpus)) / 2)


def test_pods_and_spines_at_1024():
    graph = build_cluster(load_system("dgx-h100"), 1024)
    assert "leaf0.3" in graph and "leaf7.0" in graph and "leaf0" not in graph
    assert len(kinds_on(graph, "leaf")) == 8 * 4
    assert len(kinds_on(graph, "spine")) == 32  # a full 32-node pod: one NIC-rate link per spine
    assert graph.edges["leaf0.0", "spine0"]["capacity_Bps"] == pytest.approx(50e9)


# ------------------------------------------------------------------ routes

def test_route_shapes(h100_16):
    graph, table = h100_16
    assert route(graph, table, 3, 3).size == 0
    assert route(graph, table, 3, 3).dtype == np.int32
    nv = route(graph, table, 0, 5)
    assert [table.edges[i] for i in nv] == [("n0.gpu0", "d0.nvsw0"), ("d0.nvsw0", "n0.gpu5")]
    same_leaf = route(graph, table, 2, 10)
    assert [table.edges[i] for i in same_leaf] == [("n0.gpu2", "n0.nic2"), ("n0.nic2", "leaf2"),
                                                   ("leaf2", "n1.nic2"), ("n1.nic2", "n1.gpu2")]
    cross = [table.edges[i] for i in route(graph, table, 2, 11)]
    spines = kinds_on(graph, "spine")
    assert cross[2] == ("leaf2", spines[13 % len(spines)]) and cross[3][1] == "leaf3"
    with pytest.raises(MoesimError, match="dst_gpu"):
        route(graph, table, 0, 16)


@pytest.mark.parametrize("name,gpus", [("dgx-h100", 16), ("dgx-h100", 1100), ("gb200-nvl72", 144),
                                       ("hgx-b200", 24)])
def test_routes_csr_equals_route(name, gpus):
    graph = build_cluster(load_system(name), gpus)
    table = link_table(graph)
    rng = np.random.default_rng(0)
    sample = np.concatenate([rng.integers(0, gpus, size=(300, 2)), [[0, 0], [0, gpus - 1], [gpus - 1, 0]]])
    ptr, links = routes(graph, table, sample)
    assert ptr.dtype == np.int64 and links.dtype == np.int32 and ptr[0] == 0 and ptr[-1] == links.size
    for p, (a, b) in enumerate(sample):
        np.testing.assert_array_equal(links[ptr[p]:ptr[p + 1]], route(graph, table, int(a), int(b)))
    # every route is a connected walk from src to dst over existing links
    gpus_ids = gpu_nodes(graph)
    for p, (a, b) in enumerate(sample[:50]):
        walk = [table.edges[i] for i in links[ptr[p]:ptr[p + 1]]]
        if a != b:
            assert walk[0][0] == gpus_ids[a] and walk[-1][1] == gpus_ids[b]
            assert all(x[1] == y[0] for x, y in zip(walk, walk[1:]))
            assert all(graph.has_edge(*e) for e in walk)


def test_routes_rejects_bad_pairs(h100_16):
    graph, table = h100_16
    with pytest.raises(MoesimError, match="pairs"):
        routes(graph, table, np.array([0, 1]))
    with pytest.raises(MoesimError, match="16"):
        routes(graph, table, np.array([[0, 16]]))
    ptr, links = routes(graph, table, np.empty((0, 2), np.int64))
    assert ptr.tolist() == [0] and links.size == 0


def test_routes_1024_gpus_all_to_all_is_fast():
    graph = build_cluster(load_system("dgx-h100"), 1024)
    table = link_table(graph)
    start = time.perf_counter()
    ptr, links = routes(graph, table, all_pairs(1024))
    elapsed = time.perf_counter() - start
    assert len(ptr) == 1024 * 1024 + 1
    assert links.min() >= 0 and links.max() < len(table)
    assert set(np.unique(np.diff(ptr))) <= {0, 2, 4, 6}
    assert elapsed < 15, f"routes for 1M pairs took {elapsed:.1f} s"


def test_system_without_profile_names_the_fix():
    system = load_system("dgx-h100")
    renamed = system.model_copy(update={"spec": system.spec.model_copy(update={"id": "my-box"})})
    with pytest.raises(MoesimError, match="topologies/profiles/my-box.yaml") as err:
        build_cluster(renamed, 16)
    assert err.value.field == "profile"
    assert build_cluster(renamed, 16, profile="dgx-h100").number_of_nodes() > 0


def test_bad_gpu_count():
    with pytest.raises(MoesimError, match="gpus"):
        build_cluster(load_system("dgx-h100"), 0)


def test_partial_node():
    graph = build_cluster(load_system("dgx-h100"), 12)
    table = link_table(graph)
    assert len(kinds_on(graph, "gpu")) == 12 and len(kinds_on(graph, "nic")) == 12
    check_connected(graph)
    ptr, links = routes(graph, table, all_pairs(12))
    assert links.max() < len(table)


# ------------------------------------------------------------------ custom topologies

CUSTOM = """\
name: two-gpus
nodes:
  - {id: a.gpu0, kind: gpu}
  - {id: b.gpu0, kind: gpu}
links:
  - {a: a.gpu0, b: b.gpu0, capacity_GBps: 25, latency_us: 2.0, kind: pcie}
"""


def test_custom_topology_loads(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(CUSTOM)
    graph = load_custom_topology(path)
    table = link_table(graph)
    assert gpu_nodes(graph) == ["a.gpu0", "b.gpu0"]
    assert graph.edges["a.gpu0", "b.gpu0"] == {"capacity_Bps": 25e9, "latency_s": 2e-6, "kind": "pcie"}
    assert graph.has_edge("b.gpu0", "a.gpu0")
    links = route(graph, table, 0, 1)
    assert [table.edges[i] for i in links] == [("a.gpu0", "b.gpu0")]
    ptr, csr = routes(graph, table, np.array([[0, 1], [1, 0], [1, 1]]))
    assert ptr.tolist() == [0, 1, 2, 2]
    assert path_latency(table, links) == pytest.approx(2e-6)


def test_custom_one_way_link_is_disconnected(tmp_path):
    path = tmp_path / "oneway.yaml"
    path.write_text(CUSTOM.replace("kind: pcie}", "kind: pcie, bidirectional: false}"))
    with pytest.raises(MoesimError, match=r"b\.gpu0 cannot reach a\.gpu0") as err:
        load_custom_topology(path)
    assert str(path) in str(err.value)


def test_custom_isolated_gpu_is_named(tmp_path):
    path = tmp_path / "island.yaml"
    path.write_text(CUSTOM.replace("links:", "  - {id: c.gpu0, kind: gpu}\nlinks:"))
    with pytest.raises(MoesimError, match=r"a\.gpu0 cannot reach c\.gpu0"):
        load_custom_topology(path)


def test_check_connected_on_a_graph():
    graph = nx.DiGraph()
    graph.add_node("x.gpu0", kind="gpu", index=0)
    graph.add_node("x.gpu1", kind="gpu", index=1)
    with pytest.raises(MoesimError, match="cannot reach"):
        check_connected(graph)


@pytest.mark.parametrize("text,field", [
    (CUSTOM.replace("latency_us: 2.0", "latency_us: 2.0, colour: red"), "links.0.colour"),
    (CUSTOM.replace("capacity_GBps: 25", "capacity_GBps: -1"), "links.0.capacity_GBps"),
    (CUSTOM.replace("kind: pcie", "kind: ethernet"), "links.0.kind"),
    (CUSTOM.replace("kind: gpu}\n  - {id: b", "kind: cpu}\n  - {id: b"), "nodes.0.kind"),
    (CUSTOM.replace("b: b.gpu0", "b: z.gpu9"), "links.0.b"),
    (CUSTOM.replace("id: b.gpu0", "id: a.gpu0"), "nodes.1.id"),
    (CUSTOM.replace("nodes:", "nodez:"), "nodez"),
])
def test_custom_bad_input_names_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MoesimError) as err:
        load_custom_topology(path)
    assert err.value.field == field
    assert err.value.fix and str(path) in err.value.file


def test_custom_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("nodes: [\n  {id: a\n")
    with pytest.raises(MoesimError, match="malformed YAML"):
        load_custom_topology(path)
