"""Disaggregated serving with a split of its own for the decode pool (`make_disagg(..., decode_parallel=)`,
`moesim serve --mode disagg --decode-tp/--decode-ep/--decode-etp`).

Checks that do not depend on calibration: every request finishes exactly once with its output
length; KV use stays within each pool's own capacity; each pool reports its own split, ranks, GPUs
and place; the decode pool runs its own step function (a lone request's TPOT is the decode
split's batch-1 step); the KV flows give every decode GPU exactly the heads it stores; same seed,
same bytes; a decode split equal to the scenario's gives the byte-identical Result of no decode
split; bad decode splits are one error line naming the option, exit 2, nothing written.
"""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.result import to_json
from moesim.costs.memory import kv_share_per_gpu
from moesim.serve.disagg import instance_gpus, kv_bytes_per_gpu, kv_flow_plan, make_disagg
from moesim.serve.load import make_load
from moesim.serve.run import serve
from moesim.serve.scheduler import Policy
from moesim.serve.step_function import simulate_decode

# prefill: attention-DP 2 x EP 2 (2 GPUs, 2 ranks); decode: TP 2 x EP 2 (2 GPUs, 1 rank of TP 2)
CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}
CHEAP_ARGS = ["--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2"]
DECODE = {"tp": 2, "ep": 2}
ISL, OSL = 256, 32


def scenario(framework: str = "sglang"):
    return load_scenario(None, dict(CHEAP, **{"runtime.framework": framework}))


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@pytest.mark.parametrize("framework", ["sglang", "vllm", "trtllm"])
@pytest.mark.parametrize("load", [dict(concurrency=12), dict(rate=60.0)])
def test_every_request_once_and_kv_within_each_pools_capacity(framework, load):
    r = serve(scenario(framework), make_load(isl=ISL, osl=OSL, requests=80, warmup=4, **load),
              disagg=make_disagg("disagg", 1, 2, decode_parallel=DECODE))
    assert r["_requests"]["finishes"] == [1] * 84 and r["_requests"]["output_tokens"] == [OSL] * 84
    for pool in r["pools"].values():
        assert 0 < pool["peak_kv_tokens_per_rank"] <= pool["peak_kv_reserved_tokens_per_rank"] \
            <= pool["kv_capacity_tokens_per_rank"]
        assert 0 < pool["busy_fraction"] <= 1
    pre, dec = r["pools"]["prefill"], r["pools"]["decode"]
    assert pre["split"] == {"tp": 1, "ep": 2, "etp": 1} and pre["ranks_per_instance"] == 2
    assert dec["split"] == {"tp": 2, "ep": 2, "etp": 1} and dec["ranks_per_instance"] == 1
    assert (pre["gpus"], dec["gpus"], dec["first_gpu"], r["gpus"], r["metrics"]["gpus"]) == (2, 4, 2, 6, 6)
    # a TP-2 decode rank holds each token's KV on two GPUs: twice the tokens of a TP-1 rank, about
    assert dec["kv_capacity_tokens_per_rank"] > 1.5 * pre["kv_capacity_tokens_per_rank"]
    assert r["scheduler"]["kv_capacity_tokens_per_rank"] == pre["kv_capacity_tokens_per_rank"]
    assert "step_function" in dec and any("split of its own" in a for a in r["assumptions"])


def test_decode_pool_runs_its_own_step_function():
    """One request at a time: the gap between tokens is a batch-1 decode step of the decode split (TP 2), not of the
    prefill split; the KV goes from the prefill rank's one GPU to both GPUs of the decode rank."""
    sc = scenario()
    disagg = make_disagg("disagg", 1, 1, decode_parallel=DECODE)
    dsc = disagg.decode_scenario(sc)
    assert dsc is not sc and (dsc.plan.tp, dsc.plan.ep, instance_gpus(dsc)) == (2, 2, 2)
    r = serve(sc, make_load(isl=ISL, osl=OSL, requests=4, concurrency=1), disagg=disagg)
    own, other = simulate_decode(dsc, 1, ISL + OSL // 2), simulate_decode(sc, 1, ISL + OSL // 2)
    assert own != pytest.approx(other, rel=1e-3)
    cpu = Policy.of(sc).step_overhead_s   # every step adds the framework's CPU and per-layer time
    assert r["metrics"]["itl_ms"]["mean"] == pytest.approx((own + cpu) * 1e3, rel=0.02)
    kv = r["kv_transfer"]
    # GQA (4 KV heads) from TP 1 to TP 2: two flows, each half of the prefill GPU's KV, together all of it
    assert kv["flows_per_request"] == 2
    assert kv["bytes_per_request"] == pytest.approx(kv_bytes_per_gpu(sc, ISL))


@pytest.mark.parametrize("tp_p, tp_d", [(1, 1), (1, 4), (4, 1), (2, 8), (8, 2), (4, 4), (8, 8), (2, 4)])
@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "deepseek-v3"])
def test_kv_flows_give_each_decode_gpu_what_it_stores(tp_p, tp_d, model):
    """Every decode GPU receives its own share of the KV (a GQA head share or the whole MLA latent),
    each part once, from a prefill GPU that stores that part; the same TP on both sides is one
    whole-share flow k -> k."""
    m = load_scenario(None, {"model": model, "gpus": 8, "parallel.ep": 8}).model
    plan = kv_flow_plan(m, tp_p, tp_d)
    share_p = Fraction(kv_share_per_gpu(m, tp_p)).limit_denominator(64)
    share_d = Fraction(kv_share_per_gpu(m, tp_d)).limit_denominator(64)
    for b in range(tp_d):
        got = sum(Fraction(s).limit_denominator(64) * share_p for a, bb, s in plan if bb == b)
        assert got == share_d, (b, plan)
    assert all(0 <= a < tp_p and 0 < s <= 1 for a, _, s in plan)
    if tp_p == tp_d:
        assert plan == [(k, k, 1.0) for k in range(tp_p)]


def test_decode_split_equal_to_the_scenarios_is_the_same_run_byte_for_byte(tmp_path):
    sc = load_scenario(None, {"model": "qwen3-30b-a3b", "gpus": 4, "parallel.tp": 2, "parallel.ep": 4})
    load = make_load(isl=ISL, osl=OSL, requests=30, warmup=2, rate=50.0, seed=4)
    plain = serve(sc, load, disagg=make_disagg("disagg", 1, 2), trace=True)
    same = serve(sc, load, disagg=make_disagg("disagg", 1, 2, decode_parallel={"tp": 2, "ep": 4}), trace=True)
    assert to_json(public(plain)) == to_json(public(same))
    assert to_json(plain["_trace"], indent=None) == to_json(same["_trace"], indent=None)
    assert "step_function" not in same["pools"]["decode"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_cli_decode_split_same_seed_same_bytes(runner, same_bytes_twice):
    args = ["serve", *CHEAP_ARGS, "--rate", "40", "--isl", str(ISL), "--osl", str(OSL), "--requests", "30",
            "--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "2", "--decode-tp", "2",
            "--decode-ep", "2", "--seed", "3"]
    result = json.loads(same_bytes_twice(args))
    assert result["pools"]["decode"]["split"] == {"tp": 2, "ep": 2, "etp": 1} and result["gpus"] == 6
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "decode pool 2 x 2 GPUs" in table.stdout


def test_cli_decode_split_equal_to_the_scenarios_same_bytes(runner):
    base = ["serve", *CHEAP_ARGS, "--concurrency", "4", "--isl", str(ISL), "--osl", str(OSL), "--requests", "20",
            "--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--json"]
    plain = runner.invoke(main, base)
    same = runner.invoke(main, base + ["--decode-tp", "1", "--decode-ep", "2"])
    assert plain.exit_code == same.exit_code == 0, same.output
    assert plain.stdout == same.stdout


@pytest.mark.parametrize("args, needle", [
    (["--decode-tp", "2"], "--decode-tp"),                                          # agg: no decode pool
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-tp", "0"], "--decode-tp"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-ep", "-2"], "--decode-ep"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "0", "--decode-ep", "2"], "--decode-workers"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-tp", "4", "--decode-ep", "2"],
     "--decode-tp"),                                                                # EP group of 2 holds no TP-4 group
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-tp", "3", "--decode-ep", "3"],
     "--decode-tp"),                                                                # 3 does not divide 32 heads
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-ep", "3"], "--decode-ep"),
    (["--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1", "--decode-ep", "2", "--decode-etp", "5"],
     "--decode-etp"),                                                               # 5 does not divide 768
])
def test_cli_bad_decode_split_one_line_exit_2_nothing_written(runner, tmp_path, args, needle):
    trace = tmp_path / "trace.json"
    result = runner.invoke(main, ["serve", *CHEAP_ARGS, "--concurrency", "2", "--isl", "8", "--osl", "8",
                                  "--trace", str(trace)] + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"error: {needle}:" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_prefill_max_running_limits_the_prefill_pool_only(runner):
    base = ["serve", *CHEAP_ARGS, "--concurrency", "8", "--isl", "64", "--osl", "8", "--requests", "16", "--json",
            "--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1"]
    free, one = (runner.invoke(main, base + extra) for extra in ([], ["--prefill-max-running", "1"]))
    assert free.exit_code == 0 and one.exit_code == 0, free.output + one.output
    free, one = json.loads(free.output), json.loads(one.output)
    assert one["pools"]["prefill"]["peak_running_per_rank"] == 1 < free["pools"]["prefill"]["peak_running_per_rank"]
    assert one["pools"]["decode"]["peak_running_per_rank"] > 1      # the decode pool keeps the framework's limit
    # one prompt at a time per prefill rank: the burst of 8 queues longer for its first tokens
    assert one["metrics"]["ttft_ms"]["mean"] > free["metrics"]["ttft_ms"]["mean"]


@pytest.mark.parametrize("args, needle", [
    (["--prefill-max-running", "0", "--mode", "disagg", "--prefill-workers", "1", "--decode-workers", "1"],
     "--prefill-max-running"),
    (["--prefill-max-running", "2"], "--prefill-max-running"),                     # agg: no prefill pool
])
def test_cli_bad_prefill_max_running_one_line_exit_2(runner, args, needle):
    result = runner.invoke(main, ["serve", *CHEAP_ARGS, "--concurrency", "2", "--isl", "8", "--osl", "8"] + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"error: {needle}:" in lines[0], result.stderr


def test_make_disagg_decode_split_checks():
    d = make_disagg("disagg", 2, 3, decode_parallel={"tp": 2, "ep": 2, "etp": None})
    assert d.decode_parallel == (("tp", 2), ("ep", 2)) and d.gpus(scenario()) == 2 * 2 + 3 * 2
    assert d.to_json() == {"prefill_instances": 2, "decode_instances": 3, "decode_parallel": {"tp": 2, "ep": 2}}
    assert make_disagg("disagg", 1, 1, decode_parallel={"tp": None}).decode_parallel is None
    sc = scenario()
    assert make_disagg("disagg", 1, 1).decode_scenario(sc) is sc   # no split of its own: the scenario's
    with pytest.raises(MoesimError) as exc:
        make_disagg("disagg", 1, 1, decode_parallel={"pp": 2})
    assert exc.value.field == "decode_parallel"
    with pytest.raises(MoesimError) as exc:
        make_disagg("agg", None, None, decode_parallel={"ep": 2})
    assert exc.value.field == "decode_ep"
    with pytest.raises(MoesimError) as exc:   # the field names the Python spelling without a CLI prefix
        make_disagg("disagg", 1, 1, decode_parallel={"tp": 4, "ep": 2}).decode_scenario(scenario())
    assert exc.value.field == "decode_tp"
