"""The load of `moesim serve` (issue 16): length distributions, arrivals traces, closed-loop starts.

Distributions keep their mean and bounds and are drawn from seeded streams (same seed, same
lengths; input and output lengths from separate streams); a trace file is read row by row with
one error line naming the file, the row and the column of a bad value; a closed loop whose clients
start staggered no longer runs every request in lockstep (p99 > p50 with fixed lengths).
"""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from moesim.core.errors import MoesimError
from moesim.serve.load import (Lengths, closed_loop_starts, make_load, open_loop_arrivals, parse_lengths, read_arrivals,
                               request_lengths)

N = 20_000


def lengths(isl, osl, seed=0, n=N):
    return request_lengths(make_load(isl=isl, osl=osl, requests=n, concurrency=8, seed=seed))


def test_parse_lengths_kinds():
    assert parse_lengths("1000", "--isl") == Lengths("fixed", 1000)
    assert parse_lengths(" fixed:64 ", "--isl") == Lengths("fixed", 64)
    assert parse_lengths(128, "--isl") == Lengths("fixed", 128)
    assert parse_lengths("uniform:500:1500", "--isl") == Lengths("uniform", 500, 1500)
    assert parse_lengths("uniform:7:7", "--isl") == Lengths("fixed", 7)
    assert parse_lengths("lognormal:1000:0.5", "--osl") == Lengths("lognormal", 1000.0, 0.5)
    assert parse_lengths("LOGNORMAL:1000:0.5:4000", "--osl") == Lengths("lognormal", 1000.0, 0.5, 4000)
    assert parse_lengths("lognormal:100:0", "--osl") == Lengths("fixed", 100)


@pytest.mark.parametrize("text", ["", "x", "0", "-5", "1.5", "fixed", "fixed:0", "uniform:5", "uniform:9:3",
                                  "uniform:0:4", "uniform:a:b", "lognormal:1000", "lognormal:0:1", "lognormal:100:-1",
                                  "lognormal:100:nan", "lognormal:100:inf", "lognormal:100:1:0", "poisson:3",
                                  "uniform:1:2:3"])
def test_parse_lengths_errors_are_one_line_naming_the_field(text):
    with pytest.raises(MoesimError) as err:
        parse_lengths(text, "--isl")
    line = str(err.value)
    assert line.startswith("--isl: ") and "\n" not in line


def test_uniform_mean_and_bounds():
    isl, osl = lengths("uniform:500:1500", "uniform:1:3")
    assert isl.min() >= 500 and isl.max() <= 1500 and {500, 1500} <= set(isl.tolist())
    assert isl.mean() == pytest.approx(1000, rel=0.01)
    assert set(osl.tolist()) == {1, 2, 3}
    assert isl.dtype == np.int64 and len(isl) == N


def test_lognormal_mean_and_cap():
    isl, _ = lengths("lognormal:1000:0.5", 10)
    assert isl.min() >= 1 and isl.mean() == pytest.approx(1000, rel=0.02)
    assert np.median(isl) == pytest.approx(1000 * np.exp(-0.5 ** 2 / 2), rel=0.03)   # lognormal's median
    capped, _ = lengths("lognormal:1000:1.0:2000", 10)
    assert capped.max() == 2000 and capped.min() >= 1


def test_fixed_lengths_and_nominal():
    isl, osl = lengths(256, "fixed:32", n=10)
    assert isl.tolist() == [256] * 10 and osl.tolist() == [32] * 10
    load = make_load(isl="uniform:100:201", osl="lognormal:50:0.3", requests=5, concurrency=2)
    assert (load.isl, load.osl) == (150, 50) and not load.all_fixed
    assert load.to_json()["input_lengths"] == {"distribution": "uniform", "low": 100, "high": 201}
    assert make_load(isl=8, osl=8, requests=5, concurrency=2).all_fixed


def test_lengths_are_seeded_and_independent():
    a = lengths("uniform:1:1000", "lognormal:100:0.7", seed=5, n=500)
    b = lengths("uniform:1:1000", "lognormal:100:0.7", seed=5, n=500)
    c = lengths("uniform:1:1000", "lognormal:100:0.7", seed=6, n=500)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    other_osl = lengths("uniform:1:1000", "uniform:1:9", seed=5, n=500)
    assert np.array_equal(other_osl[0], a[0])   # changing one distribution never shifts the other


def write(path, text):
    path.write_text(text)
    return path


def test_csv_and_jsonl_traces(tmp_path):
    csv = write(tmp_path / "t.csv", "arrival_s,input_tokens,output_tokens\n10.5,100,20\n10.0,50,5\n\n12,70,7\n")
    tr = read_arrivals(csv)
    assert tr.times == (0.0, 0.5, 2.0) and tr.isl == (50, 100, 70) and tr.osl == (5, 20, 7)   # sorted, shifted
    jsonl = write(tmp_path / "t.jsonl", '{"timestamp": 0, "isl": 8, "osl": 3}\n\n{"timestamp": 0.25, "isl": 9, '
                                        '"osl": 4.0}\n')
    tr = read_arrivals(jsonl)
    assert tr.times == (0.0, 0.25) and tr.isl == (8, 9) and tr.osl == (3, 4)
    load = make_load(arrivals=read_arrivals(csv), warmup=1)
    assert load.mode == "trace" and load.requests == 2 and load.total == 3
    assert open_loop_arrivals(load).tolist() == [0.0, 0.5, 2.0]
    isl, osl = request_lengths(load)
    assert isl.tolist() == [50, 100, 70] and osl.tolist() == [5, 20, 7]
    assert make_load(arrivals=read_arrivals(csv), requests=2).total == 2
    assert load.to_json()["arrivals"] == "t.csv"


@pytest.mark.parametrize("name, text, where", [
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n0,10,5\n1,abc,5\n", "row 2, input_tokens"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n0,10,5\n1,10,0\n", "row 2, output_tokens"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n0,10,5\n-1,10,5\n", "row 2, arrival_s"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\nnan,10,5\n", "row 1, arrival_s"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n0,10.5,5\n", "row 1, input_tokens"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n0,10\n", "row 1"),
    ("bad.csv", "arrival_s,prompt,output_tokens\n0,10,5\n", "row 1"),
    ("bad.csv", "arrival_s,input_tokens,output_tokens\n", "arrivals"),
    ("bad.jsonl", '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n[1, 2]\n', "row 2"),
    ("bad.jsonl", '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n{oops\n', "row 2"),
    ("bad.jsonl", '{"arrival_s": true, "input_tokens": 1, "output_tokens": 1}\n', "row 1, arrival_s"),
    ("bad.jsonl", '{"arrival_s": 0, "input_tokens": "7x", "output_tokens": 1}\n', "row 1, input_tokens"),
    ("bad.txt", "arrival_s,input_tokens,output_tokens\n0,1,1\n", "arrivals"),
])
def test_bad_trace_rows_are_one_line_naming_file_row_and_field(tmp_path, name, text, where):
    path = write(tmp_path / name, text)
    with pytest.raises(MoesimError) as err:
        read_arrivals(path)
    line = str(err.value)
    assert line.startswith(f"{path}: {where}") and "\n" not in line, line


def test_missing_trace_and_bad_trace_loads(tmp_path):
    with pytest.raises(MoesimError, match="cannot read"):
        read_arrivals(tmp_path / "none.csv")
    tr = read_arrivals(write(tmp_path / "t.csv", "arrival_s,input_tokens,output_tokens\n0,1,1\n1,1,1\n"))
    for kwargs, field in ((dict(requests=3), "--requests"), (dict(warmup=2), "--warmup"), (dict(isl=4), "--isl"),
                          (dict(rate=1.0), "--arrivals")):
        with pytest.raises(MoesimError, match=field):
            make_load(arrivals=tr, prefix="--", **kwargs)


def test_closed_loop_starts():
    load = make_load(isl=8, osl=8, requests=100, concurrency=16, seed=2)
    starts = closed_loop_starts(load, 3.0)
    assert len(starts) == 16 and np.all(np.diff(starts) >= 0) and 0 <= starts[0] and starts[-1] < 3.0
    assert np.array_equal(starts, closed_loop_starts(load, 3.0))
    assert not np.array_equal(starts, closed_loop_starts(make_load(isl=8, osl=8, requests=100, concurrency=16,
                                                                   seed=3), 3.0))
    burst = make_load(isl=8, osl=8, requests=100, concurrency=16, closed_loop_start="burst")
    assert closed_loop_starts(burst, 3.0).tolist() == [0.0] * 16
    assert len(closed_loop_starts(make_load(isl=8, osl=8, requests=4, concurrency=16), 1.0)) == 4
    with pytest.raises(MoesimError, match="closed-loop-start"):
        make_load(isl=8, osl=8, requests=4, concurrency=16, closed_loop_start="ramp", prefix="--")


def _run_staggers() -> bool:
    from moesim.serve import run
    return "closed_loop_starts" in inspect.getsource(run)


@pytest.mark.skipif(not _run_staggers(), reason="serve.run does not call load.closed_loop_starts yet "
                                                "(the wiring belongs with moesim/serve/run.py)")
def test_staggered_closed_loop_is_not_lockstep():
    """Fixed lengths, clients started at once: every request sees the same batches (p50 = p99 of
    TPOT). Staggered starts spread them: p99 > p50."""
    from moesim.cluster.scenario import load_scenario
    from moesim.serve.run import serve
    sc = load_scenario(None, {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2})
    runs = {}
    for start in ("burst", "staggered"):
        m = serve(sc, make_load(isl=256, osl=32, requests=200, concurrency=16, closed_loop_start=start))["metrics"]
        runs[start] = m
    assert runs["burst"]["tpot_ms"]["p99"] == pytest.approx(runs["burst"]["tpot_ms"]["p50"], rel=1e-9)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert runs["staggered"][key]["p99"] > runs["staggered"][key]["p50"] * 1.01, key
    assert json.dumps(runs["staggered"]) == json.dumps(
        serve(sc, make_load(isl=256, osl=32, requests=200, concurrency=16))["metrics"])   # seeded: same bytes
