"""`moesim serve --mode disagg` and `--trace` (issue 16, disaggregation increment).

Checks that do not depend on calibration: at very low load a request costs one prefill step,
its KV transfer and batch-1 decode steps; a lone KV transfer takes its bytes over the path's
bottleneck link (NVLink inside a node, the NIC between nodes) plus the path latency, and
concurrent transfers share links max-min fairly; every request finishes exactly once; Little's
law in a closed loop; the trace has one event per engine step and per request phase; same seed,
same bytes; the CLI's one-line errors, with nothing written.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.links import path_latency
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.result import to_json
from moesim.costs.collectives import build_fabric
from moesim.serve.disagg import Transfers, instance_gpus, kv_bytes_per_gpu, make_disagg
from moesim.serve.load import make_load
from moesim.serve.run import serve
from moesim.serve.scheduler import Policy
from moesim.serve.step_function import simulate_decode, simulate_prefill
from moesim.specs.precision import bytes_per_element

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}   # 2-GPU instances on DGX H100 (8 per node)
ISL, OSL = 256, 32
CHEAP_ARGS = ["--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2"]


def scenario(framework: str = "sglang"):
    return load_scenario(None, dict(CHEAP, **{"runtime.framework": framework}))


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def lone_transfer(sc, src: int, dst: int, gpus: int) -> tuple[float, float, set]:
    """(seconds: bytes over the path's slowest link plus the path latency, that link's rate, its
    kind), straight from the fabric."""
    fabric = build_fabric(sc.system, gpus)
    links, _ = Transfers(fabric).path(src, dst)
    rate = fabric.capacity_Bps[links].min()
    return (kv_bytes_per_gpu(sc, ISL) / rate + path_latency(fabric.table, links), rate,
            {str(fabric.table.kind[i]) for i in links[fabric.capacity_Bps[links] == rate]})


def test_low_load_limits_and_kv_transfer_inside_a_node():
    """One request at a time on 1 prefill + 1 decode instance (GPUs 0-1 and 2-3 of one node):
    TTFT = the request overhead + its prefill step (at the prefill scale) + its KV transfer + the hand-over (the
    decode worker streams the first token), TPOT = a batch-1 decode step, each step with the framework's CPU time, the
    transfer is bytes / NVLink rate (+ path latency), and E2E is the aggregated E2E plus exactly the
    transfer and the hand-over."""
    sc = scenario()
    p = Policy.of(sc)
    assert p.kv_handoff_s > 0
    load = make_load(isl=ISL, osl=OSL, requests=5, concurrency=1)
    r = serve(sc, load, disagg=make_disagg("disagg", 1, 1))
    m, kv = r["metrics"], r["kv_transfer"]
    expected, rate, bottleneck = lone_transfer(sc, 0, instance_gpus(sc), 4)   # GPU 0 -> the decode pool's first
    assert bottleneck == {"nvlink"} and kv["first_pair_links"] == ["nvlink"]
    assert rate == pytest.approx(sc.system.spec.scale_up.measured_p2p_GBps.value * 1e9)   # the sourced P2P rate
    for key in ("mean", "p50", "p90", "p99"):
        assert kv["transfer_ms"][key] == pytest.approx(expected * 1e3, rel=1e-9)
    assert kv["wait_for_decode_slot_ms"]["p99"] == 0.0
    prefill = p.request_overhead_s + p.prefill_scale * simulate_prefill(sc, ISL, ISL) + p.step_overhead_s
    assert m["ttft_ms"]["mean"] == pytest.approx((prefill + expected + p.kv_handoff_s) * 1e3, rel=0.02)
    assert m["itl_ms"]["mean"] == pytest.approx((simulate_decode(sc, 1, ISL + OSL // 2) + p.step_overhead_s) * 1e3,
                                                rel=0.02)
    # the first token seen the request overhead late, the last one not (tests/test_serve.py)
    assert m["tpot_ms"]["mean"] == pytest.approx(m["itl_ms"]["mean"] - p.request_overhead_s * 1e3 / (OSL - 1), rel=1e-9)
    agg = serve(sc, load)["metrics"]
    assert m["e2e_ms"]["mean"] - agg["e2e_ms"]["mean"] == pytest.approx((expected + p.kv_handoff_s) * 1e3, rel=1e-6)
    assert m["tpot_ms"]["mean"] == pytest.approx(agg["tpot_ms"]["mean"], rel=1e-9)
    assert m["gpus"] == r["gpus"] == 4 and r["mode"] == "disagg"
    # the bytes are the model's KV per token (the `moesim models` column) at the KV format, times the prompt
    per_token = sc.model.kv_bytes_per_token(bytes_per_element(sc.input.dtypes.kv_cache))
    assert kv["bytes_per_request"] == pytest.approx(per_token * ISL) and kv["flows_per_request"] == sc.plan.tp == 1


def test_kv_transfer_across_nodes_runs_at_the_nic_rate():
    """4 + 4 instances of 2 GPUs: prefill on node 0 (GPUs 0-7), decode on node 1 (8-15), so a
    lone transfer crosses the NICs, at the system file's effective NIC rate."""
    sc = scenario()
    r = serve(sc, make_load(isl=ISL, osl=OSL, requests=8, concurrency=1), disagg=make_disagg("disagg", 4, 4))
    expected, rate, bottleneck = lone_transfer(sc, 0, 8, 16)
    assert bottleneck == {sc.system.spec.scale_out.kind}
    assert rate == pytest.approx(sc.system.spec.scale_out.nic_effective_GBps.value * 1e9)   # the sourced NIC rate
    t = r["kv_transfer"]["transfer_ms"]
    assert t["mean"] == pytest.approx(expected * 1e3, rel=1e-9) and t["p99"] == pytest.approx(t["p50"], rel=1e-9)
    assert r["pools"]["decode"]["first_gpu"] == 8 and r["gpus"] == 16


def test_concurrent_transfers_share_links():
    """Two flows on one path: together each takes twice as long; one that starts halfway through
    the other's life ends when max-min sharing says (fluid model)."""
    fabric = build_fabric(scenario().system, 4)
    net = Transfers(fabric)
    links, latency = net.path(0, 2)
    rate = fabric.capacity_Bps[links].min()
    size = 1e9
    (lat_a, a), = net.open(0, [(0, 2)], size)
    (lat_b, b), = net.open(1, [(0, 2)], size)
    net.start(lat_a, a)
    half = lat_a + size / rate / 2
    t_next = net.start(half, b)                       # A has half left, B all: both at rate / 2
    assert t_next == pytest.approx(half + size / rate, rel=1e-12)
    done, t_next = net.check(t_next, net.version)
    assert done == [0]
    assert t_next == pytest.approx(half + size / rate + size / rate / 2, rel=1e-12)  # B alone again
    done, t_next = net.check(t_next, net.version)
    assert done == [1] and t_next is None
    assert net.check(0.0, net.version - 1) == ([], None)   # a stale check does nothing


def test_a_flow_whose_bytes_left_rounded_below_zero_ends_at_the_next_check():
    """Sending at its rate up to its computed end can leave a flow a hair below zero bytes (float rounding):
    it is due now, and the check ends it, rather than finding nothing due at the same time again and again."""
    fabric = build_fabric(scenario().system, 4)
    net = Transfers(fabric)
    (lat_a, a), = net.open(0, [(0, 2)], 1e9)
    (lat_b, b), = net.open(1, [(0, 2)], 1e9)
    net.start(lat_a, a)
    net.start(lat_a, b)
    net._bytes_left[0] = -1e-7                        # as a rounding of rate x dt can leave it
    t_next = net._resolve()
    assert t_next == net.clock and net.due == [a]
    done, t_next = net.check(t_next, net.version)
    assert done == [0] and t_next > net.clock        # the other flow goes on, alone
    done, t_next = net.check(t_next, net.version)
    assert done == [1] and t_next is None


@pytest.mark.parametrize("framework", ["sglang", "vllm"])
@pytest.mark.parametrize("load", [dict(concurrency=16), dict(rate=60.0)])
def test_every_request_finishes_once_with_its_output_length(framework, load):
    r = serve(scenario(framework), make_load(isl=ISL, osl=OSL, requests=120, warmup=5, **load),
              disagg=make_disagg("disagg", 1, 2))
    assert r["_requests"]["finishes"] == [1] * 125
    assert r["_requests"]["output_tokens"] == [OSL] * 125
    times = {k: np.array(v) for k, v in r["_requests"]["times_s"].items()}
    order = ["arrival", "prefill_start", "prefill_end", "transfer_start", "transfer_end", "first_token", "finish"]
    for before, after in zip(order, order[1:]):
        assert np.all(times[before] <= times[after]), (before, after)
    s = r["scheduler"]
    assert 0 < s["peak_kv_tokens_per_rank"] <= s["peak_kv_reserved_tokens_per_rank"] <= s["kv_capacity_tokens_per_rank"]
    for pool in r["pools"].values():
        assert 0 < pool["busy_fraction"] <= 1


def test_one_token_outputs_finish_when_their_kv_arrives():
    r = serve(scenario(), make_load(isl=ISL, osl=1, requests=20, concurrency=4), disagg=make_disagg("disagg", 1, 1))
    assert r["_requests"]["finishes"] == [1] * 20 and r["pools"]["decode"]["steps"] == 0
    assert r["metrics"]["ttft_ms"]["mean"] == pytest.approx(r["metrics"]["e2e_ms"]["mean"])


def test_littles_law_closed_loop():
    concurrency = 8
    r = serve(scenario(), make_load(isl=ISL, osl=OSL, requests=400, warmup=concurrency, concurrency=concurrency),
              disagg=make_disagg("disagg", 1, 1))
    m = r["metrics"]
    assert m["requests_per_s"] * m["e2e_ms"]["mean"] / 1e3 == pytest.approx(concurrency, rel=0.02)


def test_a_prefill_pool_of_its_own_batch_limit_prefills_one_prompt_at_a_time():
    sc = scenario()
    load = make_load(isl=ISL, osl=OSL, requests=24, concurrency=8, closed_loop_start="burst")
    batched = serve(sc, load, disagg=make_disagg("disagg", 1, 1))
    single = serve(sc, load, disagg=make_disagg("disagg", 1, 1, prefill_max_running=1))
    assert batched["pools"]["prefill"]["peak_running_per_rank"] > 1
    assert single["pools"]["prefill"]["peak_running_per_rank"] == 1
    assert single["metrics"]["ttft_ms"]["mean"] > batched["metrics"]["ttft_ms"]["mean"]   # prompts queue
    assert single["scheduler"]["policy"]["max_running_requests_per_rank"] > 1              # decode keeps its own
    with pytest.raises(MoesimError, match="only for disaggregated"):
        make_disagg("agg", None, None, prefill_max_running=1)


@pytest.mark.parametrize("mode, phases", [("agg", 3), ("disagg", 6)])
def test_trace_one_event_per_step_and_request_phase(mode, phases):
    disagg = make_disagg("disagg", 1, 2) if mode == "disagg" else None
    r = serve(scenario(), make_load(isl=ISL, osl=OSL, requests=30, warmup=2, concurrency=6), disagg=disagg, trace=True)
    trace = json.loads(to_json(r["_trace"], indent=None))
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    steps = [e for e in complete if e["pid"] == 0]
    phase_events = [e for e in complete if e["pid"] == 1]
    assert len(steps) == r["scheduler"]["steps"]
    assert len(phase_events) == 32 * phases and {e["tid"] for e in phase_events} == set(range(32))
    assert all(e["dur"] >= 0 for e in complete)
    if mode == "disagg":
        tracks = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["pid"] == 0
                  and e["name"] == "thread_name"}
        assert tracks == {"prefill 0", "decode 0", "decode 1"}
        assert sum(e["tid"] == 0 for e in steps) == r["pools"]["prefill"]["steps"]


def test_make_disagg_checks():
    assert make_disagg("agg", None, None) is None
    assert make_disagg("disagg", 2, 3).gpus(scenario()) == 10


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_cli_disagg_same_seed_same_bytes(runner, same_bytes_twice):
    args = ["serve", *CHEAP_ARGS, "--rate", "40", "--isl", str(ISL), "--osl", str(OSL), "--requests", "40",
            "--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "2", "--seed", "3"]
    result = json.loads(same_bytes_twice(args))
    assert result["mode"] == "disagg" and set(result["pools"]) == {"prefill", "decode"}
    assert set(result["kv_transfer"]["transfer_ms"]) == {"mean", "p50", "p90", "p99"}
    assert not any(k.startswith("_") for k in result)
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "KV transfer" in table.stdout and "prefill pool" in table.stdout


@pytest.mark.parametrize("args, needle", [
    (["--mode", "disagg", "--prefill-workers", "0", "--decode-workers", "1"], "--prefill-workers"),
    (["--mode", "disagg", "--prefill-workers", "-2", "--decode-workers", "1"], "--prefill-workers"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "0"], "--decode-workers"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "-1"], "--decode-workers"),
    (["--mode", "disagg", "--decode-workers", "1"], "--prefill-workers"),
    (["--mode", "disagg", "--prefill-workers", "1"], "--decode-workers"),
    (["--prefill-workers", "1", "--decode-workers", "1"], "--prefill-workers"),
    (["--mode", "agg", "--decode-workers", "1"], "--decode-workers"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--isl", "100000000"], "--isl/--osl"),
])
def test_cli_errors_are_one_line_exit_2_nothing_written(runner, tmp_path, args, needle):
    trace = tmp_path / "trace.json"
    base = ["serve", *CHEAP_ARGS, "--concurrency", "2", "--osl", "8", "--trace", str(trace)]
    if "--isl" not in args:
        base += ["--isl", "8"]
    result = runner.invoke(main, base + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
