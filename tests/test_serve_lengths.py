"""`moesim serve` with per-request lengths (issue 16): drawn distributions and arrivals traces run
request by request, TPOT divides by each request's own output length, `--arrivals` and `--cache`
end to end through the CLI.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.result import to_json
from moesim.serve import step_function
from moesim.serve.disagg import make_disagg
from moesim.serve.load import make_load, read_arrivals, request_lengths
from moesim.serve.metrics import run_metrics
from moesim.serve.run import serve
from moesim.serve.scheduler import Policy
from moesim.serve.step_function import simulate_decode

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}
CHEAP_ARGS = ["--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2"]
TRACE = "arrival_s,input_tokens,output_tokens\n0.0,200,12\n0.01,64,1\n0.02,500,30\n0.5,128,7\n0.51,300,20\n"


def scenario(framework: str = "sglang"):
    return load_scenario(None, dict(CHEAP, **{"runtime.framework": framework}))


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@pytest.mark.parametrize("framework, mode", [("sglang", "agg"), ("vllm", "agg"), ("sglang", "disagg")])
def test_every_request_finishes_once_with_its_own_output_length(framework, mode):
    """Lengths drawn per request (one-token outputs included): each request generates exactly its
    own OSL, finishes once, and KV stays within capacity; token counts are the sum of the OSLs."""
    load = make_load(isl="uniform:16:600", osl="uniform:1:40", requests=90, warmup=6, concurrency=12, seed=7)
    isl, osl = request_lengths(load)
    assert len(set(osl.tolist())) > 10 and 1 in osl.tolist()
    disagg = make_disagg("disagg", 1, 1) if mode == "disagg" else None
    r = serve(scenario(framework), load, disagg=disagg)
    assert r["_requests"]["finishes"] == [1] * load.total
    assert r["_requests"]["output_tokens"] == osl.tolist()
    m, s = r["metrics"], r["scheduler"]
    assert m["requests"] == 90 and m["output_tokens"] == int(osl[6:].sum())
    assert m["output_tokens_per_s"] == pytest.approx(osl[6:].sum() / m["duration_s"])
    assert 0 < s["peak_kv_tokens_per_rank"] <= s["peak_kv_reserved_tokens_per_rank"] <= s["kv_capacity_tokens_per_rank"]
    assert r["step_function"]["decode_contexts"][-1] >= int((isl + osl).max())   # the grid reaches the longest
    assert r["load"]["input_lengths"] == {"distribution": "uniform", "low": 16, "high": 600}


def test_tpot_divides_by_each_requests_own_output_length():
    """run_metrics: two requests streaming one token a second, of 11 and 21 tokens, both have TPOT
    1 s (dividing by a common OSL would give them different TPOTs); a one-token output has none."""
    m = run_metrics(arrival=np.zeros(3), first_token=np.array([1.0, 1.0, 1.0]), finish=np.array([11.0, 21.0, 1.0]),
                    osl=np.array([11, 21, 1]), itl_s=np.ones(30), gpus=1)
    assert m["tpot_ms"] == {"mean": 1e3, "p50": 1e3, "p90": 1e3, "p99": 1e3}
    assert m["output_tokens"] == 33


def test_low_load_tpot_with_varied_output_lengths_is_one_decode_step():
    """One request at a time, output lengths 8..64: every request's TPOT is a batch-1 decode step,
    whatever its own length (a common OSL would spread them over 8x). Without a request overhead, which the
    client sees on the first token only, so a short output's TPOT would hold less of it."""
    sc = scenario()
    policy = Policy(**dict(Policy.of(sc).__dict__, request_overhead_s=0.0))
    m = serve(sc, make_load(isl=256, osl="uniform:8:64", requests=12, concurrency=1, seed=1), policy=policy)["metrics"]
    step_ms = (simulate_decode(sc, 1, 256 + 18) + Policy.of(sc).step_overhead_s) * 1e3   # + the step's CPU and per-layer time
    for key in ("p50", "p99"):
        assert m["tpot_ms"][key] == pytest.approx(step_ms, rel=0.03)
    assert m["tpot_ms"]["p99"] <= m["tpot_ms"]["p50"] * 1.03


def test_trace_runs_its_own_times_and_lengths(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRACE)
    load = make_load(arrivals=read_arrivals(path))
    r = serve(scenario(), load)
    assert r["_requests"]["output_tokens"] == [12, 1, 30, 7, 20] and r["_requests"]["finishes"] == [1] * 5
    assert r["load"]["mode"] == "trace" and r["metrics"]["requests"] == 5 and r["metrics"]["output_tokens"] == 70


def test_kv_fit_error_names_the_longest_request(tmp_path):
    """The mean request fits the KV cache; the longest one never can: one error naming its lengths."""
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,100,10\n0,100,10\n0,100,10\n0,2000000,10\n")
    with pytest.raises(MoesimError, match=r"2,000,000 \+ 10 tokens can never fit"):
        serve(scenario(), make_load(arrivals=read_arrivals(path)))


def test_lengths_are_seeded_same_bytes():
    sc = scenario()
    load = make_load(isl="lognormal:200:0.5", osl="uniform:4:24", requests=40, concurrency=6, seed=3)
    first = to_json(public(serve(sc, load)))
    step_function._CACHE.clear()
    assert to_json(public(serve(sc, load))) == first
    other = make_load(isl="lognormal:200:0.5", osl="uniform:4:24", requests=40, concurrency=6, seed=4)
    assert to_json(public(serve(sc, other))) != first


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_cli_arrivals_end_to_end(runner, tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    out = runner.invoke(main, ["serve", *CHEAP_ARGS, "--arrivals", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["load"]["mode"] == "trace" and data["load"]["arrivals"] == "trace.csv"
    assert data["load"]["requests"] == 5 and data["metrics"]["requests"] == 5
    assert data["load"]["isl"] == round((200 + 64 + 500 + 128 + 300) / 5)
    table = runner.invoke(main, ["serve", *CHEAP_ARGS, "--arrivals", str(path), "--requests", "4", "--warmup", "1"])
    assert table.exit_code == 0, table.output
    assert "arrivals trace.csv" in table.stdout and "4 requests (+1 warm-up)" in table.stdout


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "2"], "--concurrency/--rate/--arrivals"),
    (["--isl", "8"], "--isl"),
    (["--requests", "9"], "--requests"),
])
def test_cli_arrivals_errors_are_one_line_exit_2(runner, tmp_path, args, needle):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    result = runner.invoke(main, ["serve", "--arrivals", str(path), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


def test_cli_bad_arrivals_row_is_one_line_exit_2(runner, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,10,5\n1,abc,5\n")
    result = runner.invoke(main, ["serve", "--arrivals", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "row 2, input_tokens" in lines[0] and str(path) in lines[0], result.stderr


def test_cli_length_distributions_and_burst_start(runner):
    out = runner.invoke(main, ["serve", *CHEAP_ARGS, "--concurrency", "4", "--isl", "lognormal:200:0.5",
                               "--osl", "uniform:8:24", "--requests", "16", "--closed-loop-start", "burst", "--json"])
    assert out.exit_code == 0, out.output
    ld = json.loads(out.stdout)["load"]
    assert ld["closed_loop_start"] == "burst" and ld["isl"] == 200 and ld["osl"] == 16
    assert ld["input_lengths"] == {"distribution": "lognormal", "mean": 200.0, "sigma": 0.5, "max": None}


def test_cli_cache_second_run_reads_it(runner, tmp_path, monkeypatch):
    """--cache DIR: the first run writes the step times it simulated there; a second run (nothing in
    memory, simulation disabled) reads them back and prints the same bytes."""
    folder = tmp_path / "cache"
    args = ["serve", *CHEAP_ARGS, "--concurrency", "4", "--isl", "128", "--osl", "8", "--requests", "12",
            "--cache", str(folder), "--json"]
    step_function._CACHE.clear()
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert [p.name.startswith("step-times-") for p in folder.iterdir()] == [True]
    step_function._CACHE.clear()

    def no_simulation(*a, **k):
        raise AssertionError("simulated a point the cache holds")
    monkeypatch.setattr(step_function, "simulate_decode", no_simulation)
    monkeypatch.setattr(step_function, "simulate_prefill", no_simulation)
    second = runner.invoke(main, args)
    assert second.exit_code == 0, second.output
    assert second.stdout == first.stdout
    step_function._CACHE.clear()


def test_cli_cache_needs_an_existing_parent(runner, tmp_path):
    result = runner.invoke(main, ["serve", *CHEAP_ARGS, "--concurrency", "2", "--isl", "8", "--osl", "8",
                                  "--cache", str(tmp_path / "missing" / "cache")])
    assert result.exit_code == 2 and "--cache" in result.stderr, result.output
    assert not (tmp_path / "missing").exists()
