"""Routing module: skew parsing, popularity tables, traces, limits, capacity, balancing; bad input."""
import numpy as np
import pytest

from moesim.core.errors import MoesimError
from moesim.costs.routing import (balance_over_batches, base_popularity, batch_popularity, expert_groups, parse_skew,
                                  sample_routing)
from moesim.specs.model import load_model

DSV3 = load_model("deepseek-v3")
MIXTRAL = load_model("mixtral-8x7b")


@pytest.mark.parametrize("text,kind,value", [("uniform", "uniform", 0), ("zipf:1.2", "zipf", 1.2),
                                             ("zipf:0", "zipf", 0), ("dirichlet:0.5", "dirichlet", 0.5)])
def test_parse_skew(text, kind, value):
    skew = parse_skew(text)
    assert (skew.kind, skew.value) == (kind, value)


@pytest.mark.parametrize("text", ["zipf:-1", "dirichlet:0", "dirichlet:-2", "zipf:abc", "pareto:1",
                                  "file:/no/such.csv", "trace:", "uniform:3"])
def test_bad_skews_name_the_field(text):
    with pytest.raises(MoesimError) as err:
        parse_skew(text)
    assert err.value.field == "routing.skew" and err.value.fix


def test_zipf_popularity_is_normalised_and_scattered():
    pop = base_popularity(DSV3, parse_skew("zipf:1.0"), seed=0)
    assert pop.shape == (58, 256) and np.allclose(pop.sum(axis=1), 1)
    assert np.argmax(pop[0]) != np.argmax(pop[1])  # hot experts differ by layer
    assert pop[0].max() / pop[0].min() == pytest.approx(256.0)


def test_dirichlet_drifts_around_the_base():
    skew = parse_skew("dirichlet:1.0")
    base = base_popularity(MIXTRAL, skew, seed=3)
    draws = np.stack([batch_popularity(base, skew, 3, b) for b in range(400)])
    assert not np.allclose(draws[0], draws[1])
    assert np.allclose(draws.mean(axis=0), base, atol=0.02)


def test_group_limited_routing_follows_the_router():
    groups, limit = expert_groups(DSV3, node_limit=None, nodes=1)
    assert limit == 4 and groups.max() == 7
    sample = sample_routing(DSV3, parse_skew("uniform"), 4096, seed=1, layers=[0])
    used = groups[sample.choices[0]]
    assert max(len(set(row)) for row in used) <= 4


def test_node_limited_routing_caps_nodes():
    sample = sample_routing(DSV3, parse_skew("zipf:1.0"), 4096, seed=1, layers=[0], node_limit=2, nodes=8)
    node = (sample.choices[0].astype(int) * 8) // 256
    assert max(len(set(row)) for row in node) <= 2


def test_node_limit_too_tight_for_k_is_rejected():
    with pytest.raises(MoesimError) as err:
        sample_routing(DSV3, parse_skew("uniform"), 16, seed=0, layers=[0], node_limit=1, nodes=64)
    assert err.value.field == "routing.node_limit"


def test_same_seed_same_routing_different_seed_differs():
    a = sample_routing(DSV3, parse_skew("zipf:1.0"), 2048, seed=5, layers=[0, 7])
    b = sample_routing(DSV3, parse_skew("zipf:1.0"), 2048, seed=5, layers=[0, 7])
    c = sample_routing(DSV3, parse_skew("zipf:1.0"), 2048, seed=6, layers=[0, 7])
    assert all(np.array_equal(x, y) for x, y in zip(a.choices, b.choices))
    assert not np.array_equal(a.choices[0], c.choices[0])
    assert a.expert_load.sum() == 2 * 2048 * 8


def test_capacity_factor_drops_pairs_of_hot_experts():
    sample = sample_routing(MIXTRAL, parse_skew("zipf:2.0"), 10_000, seed=0, layers=[0], capacity_factor=1.0)
    assert sample.dropped[0] > 0
    assert sample.expert_load.max() <= np.ceil(10_000 * 2 / 8)
    assert sample.expert_load.sum() + sample.dropped[0] == 10_000 * 2


def test_popularity_file_round_trip(tmp_path):
    table = np.arange(1, 9, dtype=float)[None, :]
    path = tmp_path / "pop.csv"
    np.savetxt(path, table, delimiter=",")
    pop = base_popularity(MIXTRAL, parse_skew(f"file:{path}"), seed=0)
    assert pop.shape == (32, 8) and np.allclose(pop[5], table[0] / table.sum())


def test_popularity_file_with_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "pop.npy"
    np.save(path, np.ones((3, 7)))
    with pytest.raises(MoesimError) as err:
        base_popularity(MIXTRAL, parse_skew(f"file:{path}"), seed=0)
    assert "(1 or 32, 8)" in err.value.problem


def test_trace_replay_and_out_of_range_ids(tmp_path):
    ids = np.array([[0, 1], [2, 3], [7, 6]], dtype=np.int64)
    good = tmp_path / "trace.npy"
    np.save(good, ids)
    sample = sample_routing(MIXTRAL, parse_skew(f"trace:{good}"), 3, seed=0, layers=[0, 1])
    assert np.array_equal(sample.choices[1], ids)
    bad = tmp_path / "bad.npy"
    np.save(bad, ids + 5)
    with pytest.raises(MoesimError) as err:
        sample_routing(MIXTRAL, parse_skew(f"trace:{bad}"), 3, seed=0, layers=[0])
    assert "outside 0..7" in err.value.problem


def test_aux_loss_free_bias_reduces_imbalance():
    series = balance_over_batches(MIXTRAL, parse_skew("zipf:1.0"), 4096, 60, seed=0, bias_speed=0.05)
    assert series[-10:].mean() < 0.8 * series[:3].mean()
