"""Collectives on the topology: nccl-tests definitions, bandwidth limits, algorithm rules."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.topology import routes
from moesim.core.errors import MoesimError
from moesim.costs.collectives import ALGORITHMS, BUSBW_FACTOR, build_fabric, collective_time, ring_flows

GiB = 2**30


def test_ring_all_reduce_busbw_approaches_achievable_nvlink():
    fabric = build_fabric("dgx-h100", 8)
    t = collective_time("dgx-h100", 8, "all_reduce", 8 * GiB, algo="ring")
    achievable = fabric.system.spec.scale_up.measured_p2p_GBps.value
    assert t.busbw_GBps == pytest.approx(achievable, rel=0.01)
    assert t.busbw_GBps < achievable


def test_busbw_grows_with_message_size_and_saturates():
    values = [collective_time("dgx-h100", 16, "all_reduce", s).busbw_GBps for s in (2**10, 2**20, 2**26, 2**33)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(collective_time("dgx-h100", 16, "all_reduce", 2**34).busbw_GBps, rel=0.02)


@pytest.mark.parametrize("op", list(ALGORITHMS))
def test_definitions_relate_time_algbw_busbw(op):
    gpus = 2 if op == "send_recv" else 8
    t = collective_time("dgx-h100", gpus, op, 64 * 2**20)
    assert t.algbw_GBps == pytest.approx(64 * 2**20 / t.time_s / 1e9)
    assert t.busbw_GBps == pytest.approx(t.algbw_GBps * BUSBW_FACTOR[op](gpus))
    assert t.time_s == pytest.approx(t.latency_s + t.bandwidth_s)


def test_multi_domain_rings_stay_on_their_rail():
    fabric = build_fabric("dgx-h100", 32)
    src, dst, rings = ring_flows(list(range(32)), fabric)
    assert rings == 8
    ptr, links = routes(fabric.graph, fabric.table, np.stack([src, dst], axis=1))
    kinds = {fabric.table.edges[i][1].split(".")[0] for i in links}
    assert not any(k.startswith("spine") for k in kinds)


def test_nvl72_all_reduce_is_nvlink_bound_inside_the_rack():
    t = collective_time("gb200-nvl72", 72, "all_reduce", 8 * GiB)
    assert t.bottleneck_kind == "nvlink"
    assert 800 < t.busbw_GBps <= 900


def test_scale_out_binds_beyond_one_node():
    inside = collective_time("dgx-h100", 8, "all_to_all", GiB)
    across = collective_time("dgx-h100", 16, "all_to_all", GiB)
    assert across.bottleneck_kind == "ib" and across.busbw_GBps < inside.busbw_GBps / 2


def test_nvls_only_inside_one_domain():
    with pytest.raises(MoesimError) as err:
        collective_time("dgx-h100", 16, "all_reduce", GiB, algo="nvls")
    assert err.value.field == "algo"


@pytest.mark.parametrize("kwargs,field", [({"op": "broadcast"}, "op"), ({"algo": "tree"}, "algo"),
                                          ({"size": -1}, "bytes"), ({"gpus": 1}, "gpus")])
def test_bad_collective_requests(kwargs, field):
    args = {"system_id": "dgx-h100", "gpus": 8, "op": "all_reduce", "size": GiB} | kwargs
    with pytest.raises(MoesimError) as err:
        collective_time(**args)
    assert err.value.field == field


def test_deterministic():
    a = collective_time("hgx-b200", 64, "all_to_all", 2**28)
    b = collective_time("hgx-b200", 64, "all_to_all", 2**28)
    assert a == b


def test_comm_cli_sweep_json():
    result = CliRunner().invoke(main, ["comm", "--system", "dgx-h100", "--gpus", "16", "--op", "all_gather",
                                       "--bytes", "1M:8M", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [r["bytes"] for r in rows] == [2**20, 2**21, 2**22, 2**23]


@pytest.mark.parametrize("args,field", [(["--bytes", "-4K"], "bytes"), (["--bytes", "8G:1G"], "bytes"),
                                        (["--system", "dgx-h10"], "system"), (["--gpus", "1"], "gpus")])
def test_comm_cli_bad_input(args, field):
    result = CliRunner().invoke(main, ["comm", *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]


def test_comm_ep_mode_times_routed_traffic():
    result = CliRunner().invoke(main, ["comm", "--ep", "--gpus", "32", "--skew", "zipf:1.0", "--placement",
                                       "eplb:32", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ep"] == 32 and data["dispatch_time_us"] > 0 and data["combine_time_us"] > data["dispatch_time_us"]
    assert data["dispatch_totals"]["scale_out_dedup_bytes"] < data["dispatch_totals"]["scale_out_direct_bytes"]
