"""`moesim serve`: request-level serving runs (issue 16, first increment).

Checks that do not depend on calibration: Little's law in a closed loop, the low-load limits
(TTFT = one prompt's prefill step, TPOT = a batch-1 decode step), every request finishing exactly
once with its output length, KV use within capacity, same seed -> same bytes, and the CLI's
one-line errors.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.core.result import to_json
from moesim.serve.load import make_load
from moesim.serve.run import serve
from moesim.serve.scheduler import Instance, Policy
from moesim.serve.step_function import build_step_function, simulate_decode, simulate_prefill

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}
ISL, OSL = 256, 32


def scenario(framework: str = "sglang"):
    return load_scenario(None, dict(CHEAP, **{"runtime.framework": framework}))


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@pytest.mark.parametrize("framework", ["sglang", "vllm"])
def test_littles_law_closed_loop(framework):
    """C requests are always in the system: C = throughput x mean latency (within 2 %)."""
    concurrency = 8
    r = serve(scenario(framework), make_load(isl=ISL, osl=OSL, requests=400, warmup=concurrency,
                                             concurrency=concurrency))
    m = r["metrics"]
    assert m["requests_per_s"] * m["e2e_ms"]["mean"] / 1e3 == pytest.approx(concurrency, rel=0.02)


def test_low_load_limits():
    """One request at a time: TTFT is the request overhead and one prefill step of the prompt (at the framework's
    prefill scale), TPOT one batch-1 decode step; every step adds the framework's CPU and per-layer time (the
    kernel profile's serving overheads)."""
    sc = scenario()
    p = Policy.of(sc)
    assert p.cpu_overhead_s > 0 and p.request_overhead_s > 0
    r = serve(sc, make_load(isl=ISL, osl=OSL, requests=5, concurrency=1))
    m = r["metrics"]
    assert m["ttft_ms"]["mean"] == pytest.approx(
        (p.request_overhead_s + p.prefill_scale * simulate_prefill(sc, ISL, ISL) + p.step_overhead_s) * 1e3, rel=0.02)
    # decode contexts run ISL+1 .. ISL+OSL-1; the step is linear in context, so the middle one
    assert m["itl_ms"]["mean"] == pytest.approx((simulate_decode(sc, 1, ISL + OSL // 2) + p.step_overhead_s) * 1e3,
                                                rel=0.02)
    # the client sees the first token the request overhead late and the last one as the engine made it (the
    # overhead is shorter than the decode here): every request's (last - first) / (OSL - 1) is shorter than the
    # engine's mean gap between tokens by overhead / (OSL - 1)
    assert p.request_overhead_s < (OSL - 1) * m["itl_ms"]["mean"] / 1e3
    assert m["tpot_ms"]["mean"] == pytest.approx(m["itl_ms"]["mean"] - p.request_overhead_s * 1e3 / (OSL - 1), rel=1e-9)
    assert r["scheduler"]["peak_running_per_rank"] == 1


@pytest.mark.parametrize("framework", ["sglang", "vllm"])
@pytest.mark.parametrize("load", [dict(concurrency=16), dict(rate=40.0)])
def test_every_request_finishes_once_with_its_output_length(framework, load):
    r = serve(scenario(framework), make_load(isl=ISL, osl=OSL, requests=120, warmup=5, **load))
    assert r["_requests"]["finishes"] == [1] * 125
    assert r["_requests"]["output_tokens"] == [OSL] * 125
    assert r["metrics"]["requests"] == 120
    s = r["scheduler"]
    assert 0 < s["peak_kv_tokens_per_rank"] <= s["peak_kv_reserved_tokens_per_rank"] <= s["kv_capacity_tokens_per_rank"]


@pytest.mark.parametrize("step_policy", ["prefill_first", "mixed"])
def test_kv_admission_stops_when_full(step_policy):
    """A rank whose KV holds 3 requests never runs a 4th, and its KV use stays within capacity."""
    sc = scenario()
    policy = Policy.of(sc)
    policy = Policy(**dict(policy.__dict__, step_policy=step_policy))
    isl, osl, n = 64, 8, 10
    fn = build_step_function(sc, isl=isl, osl=osl, max_batch=4, max_prefill_tokens=policy.token_budget)
    prefilled, generated = [0] * n, [0] * n
    engine = Instance(1, policy, fn, isl=isl, osl=osl, kv_capacity=3 * (isl + osl), prefilled=prefilled,
                      generated=generated)
    engine.ranks[0].waiting.extend(range(n))
    done, t = [], 0.0
    while engine.has_work():
        plan = engine.plan()
        t += plan.duration_s
        engine.apply(plan, t, lambda req, now: None, lambda req, now: done.append(req))
        assert engine.ranks[0].kv_used <= engine.kv_capacity
        assert engine.ranks[0].running <= 3
    assert sorted(done) == list(range(n)) and generated == [osl] * n
    assert engine.peak_running == 3 and engine.peak_kv_used <= engine.kv_capacity


def test_cuda_graph_padding():
    sglang, vllm = Policy.of(scenario("sglang")), Policy.of(scenario("vllm"))
    assert [sglang.padded(b) for b in (1, 3, 9, 17, 160, 161)] == [1, 4, 16, 24, 160, 161]
    assert [vllm.padded(b) for b in (3, 5, 500, 513)] == [4, 8, 504, 513]


def test_same_seed_same_bytes_other_seed_other_bytes():
    from moesim.serve import step_function
    sc = scenario()
    load = make_load(isl=ISL, osl=OSL, requests=60, rate=30.0, seed=3)
    first = to_json(public(serve(sc, load)))
    step_function._CACHE.clear()  # rebuild the step function too
    assert to_json(public(serve(sc, load))) == first
    assert to_json(public(serve(sc, make_load(isl=ISL, osl=OSL, requests=60, rate=30.0, seed=4)))) != first


def test_result_shape():
    r = serve(scenario(), make_load(isl=ISL, osl=OSL, requests=20, concurrency=4))
    m = r["metrics"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(m[key]) == {"mean", "p50", "p90", "p99"}
        assert m[key]["p50"] <= m[key]["p90"] <= m[key]["p99"]
    assert m["gpus"] == 2 and m["output_tokens_per_s_per_gpu"] > 0 and m["output_tokens_per_s_per_user"] > 0
    assert r["provenance"]["code_and_data_digest"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "0", "--isl", "8", "--osl", "8"], "--concurrency"),
    (["--concurrency", "-3", "--isl", "8", "--osl", "8"], "--concurrency"),
    (["--rate", "0", "--isl", "8", "--osl", "8"], "--rate"),
    (["--rate", "-1.5", "--isl", "8", "--osl", "8"], "--rate"),
    (["--rate", "nan", "--isl", "8", "--osl", "8"], "--rate"),
    (["--isl", "8", "--osl", "8"], "--concurrency/--rate"),
    (["--rate", "1", "--concurrency", "2", "--isl", "8", "--osl", "8"], "--concurrency/--rate"),
    (["--concurrency", "2", "--isl", "0", "--osl", "8"], "--isl"),
    (["--concurrency", "2", "--isl", "8", "--osl", "-1"], "--osl"),
    (["--concurrency", "2", "--isl", "8", "--osl", "8", "--requests", "0"], "--requests"),
    (["--concurrency", "2", "--isl", "8", "--osl", "8", "--warmup", "-1"], "--warmup"),
    (["--concurrency", "2", "--isl", "100000000", "--osl", "8"], "--isl/--osl"),
    (["--concurrency", "2", "--osl", "8"], "--isl"),
    (["--concurrency", "2", "--isl", "8", "--osl", "8", "--batch", "4"], "--batch"),
])
def test_cli_errors_are_one_line_exit_2(runner, args, needle):
    result = runner.invoke(main, ["serve", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_json_and_table(runner):
    import json
    args = ["serve", "--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2", "--concurrency", "4",
            "--isl", str(ISL), "--osl", str(OSL), "--requests", "20"]
    out = runner.invoke(main, args + ["--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data["metrics"]["ttft_ms"]) == {"mean", "p50", "p90", "p99"} and "_requests" not in data
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "TTFT" in table.stdout and "output tokens/s per GPU" in table.stdout
