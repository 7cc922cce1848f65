"""Goodput under SLOs and the serve report (issue 16): `serve(..., slo=...)` / `moesim serve
--slo-ttft-ms/--slo-tpot-ms/--slo-e2e-ms` count the measured requests that meet their SLOs
(DistServe's goodput), `moesim serve --report` writes the run's report atomically, and a plan
report of a space under load draws the throughput-interactivity front."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.planning import space as search_space
from moesim.planning.planner import plan
from moesim.present.report import read_input, write_report
from moesim.serve.disagg import make_disagg
from moesim.serve.load import make_load
from moesim.serve.metrics import goodput
from moesim.serve.run import serve

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}
CHEAP_FLAGS = ["--model", "qwen3-30b-a3b", "--gpus", "2", "--ep", "2"]
LOAD = dict(isl=256, osl=32, requests=48, concurrency=8, warmup=4)
LOAD_FLAGS = ["--concurrency", "8", "--isl", "256", "--osl", "32", "--requests", "24"]
PNG = re.compile(r'src="data:image/png;base64,')


@pytest.fixture(scope="module")
def agg():
    return serve(load_scenario(None, CHEAP), make_load(**LOAD))


def _goodput(result: dict, **slo) -> dict:
    req, m = result["_requests"], result["metrics"]
    return goodput(ttft_s=req["ttft_s"], e2e_s=req["e2e_s"], osl=req["osl"], duration_s=m["duration_s"],
                   gpus=m["gpus"], slo=slo)


def test_goodput_loose_slos_count_every_request(agg):
    g = _goodput(agg, ttft_ms=1e9, tpot_ms=1e9, e2e_ms=1e9)
    m = agg["metrics"]
    assert g["fraction"] == 1.0 and g["good_requests"] == m["requests"] == LOAD["requests"]
    assert g["requests_per_s"] == pytest.approx(m["requests_per_s"])
    assert g["output_tokens_per_s_per_gpu"] == pytest.approx(m["output_tokens_per_s_per_gpu"])


def test_goodput_impossible_slos_count_none(agg):
    for slo in ({"ttft_ms": 1e-6}, {"tpot_ms": 1e-6}, {"e2e_ms": 1e-6}):
        g = _goodput(agg, **slo)
        assert g["fraction"] == 0.0 and g["good_requests"] == 0
        assert g["requests_per_s"] == g["output_tokens_per_s"] == g["output_tokens_per_s_per_gpu"] == 0.0


def test_goodput_middle_slo_equals_a_hand_count(agg):
    req = agg["_requests"]
    ttft, e2e, osl = (np.asarray(req[k], dtype=float) for k in ("ttft_s", "e2e_s", "osl"))
    tpot = (e2e - ttft) / (osl - 1)
    slo_ttft, slo_tpot = float(np.median(ttft)) * 1e3, float(np.median(tpot)) * 1e3
    good = (ttft * 1e3 <= slo_ttft) & (tpot * 1e3 <= slo_tpot)
    assert 0 < good.sum() < len(good)   # a middle SLO: some requests meet it, some do not
    g = _goodput(agg, ttft_ms=slo_ttft, tpot_ms=slo_tpot)
    m = agg["metrics"]
    assert g["good_requests"] == int(good.sum()) and g["fraction"] == pytest.approx(good.mean())
    assert g["requests_per_s"] == pytest.approx(good.sum() / m["duration_s"])
    assert g["output_tokens_per_s"] == pytest.approx(osl[good].sum() / m["duration_s"])
    assert g["output_tokens_per_s_per_gpu"] == pytest.approx(osl[good].sum() / m["duration_s"] / 2)
    # through serve(): the same count, and the run's other metrics unchanged
    again = serve(load_scenario(None, CHEAP), make_load(**LOAD), slo={"ttft_ms": slo_ttft, "tpot_ms": slo_tpot})
    assert again["metrics"]["goodput"] == g
    assert {k: v for k, v in again["metrics"].items() if k != "goodput"} == agg["metrics"]
    assert g["slo_ms"] == {"ttft_ms": slo_ttft, "tpot_ms": slo_tpot}


def test_goodput_one_token_outputs_pass_a_tpot_slo():
    g = goodput(ttft_s=np.array([0.01, 0.01]), e2e_s=np.array([0.01, 0.5]), osl=np.array([1, 11]), duration_s=1.0,
                gpus=1, slo={"tpot_ms": 10.0})
    assert g["good_requests"] == 1 and g["good_output_tokens"] == 1   # the second: TPOT 49 ms


def test_disagg_returns_per_request_latencies_and_a_decode_timeline():
    r = serve(load_scenario(None, CHEAP), make_load(**LOAD), disagg=make_disagg("disagg", 1, 1),
              slo={"ttft_ms": 1e9})
    req, m = r["_requests"], r["metrics"]
    assert len(req["ttft_s"]) == len(req["e2e_s"]) == len(req["osl"]) == LOAD["requests"]
    assert float(np.mean(req["ttft_s"])) * 1e3 == pytest.approx(m["ttft_ms"]["mean"])
    assert float(np.mean(req["e2e_s"])) * 1e3 == pytest.approx(m["e2e_ms"]["mean"])
    assert m["goodput"]["fraction"] == 1.0
    tl = r["timeline"]
    assert tl["pool"] == "decode" and tl["t_s"] and len(tl["t_s"]) <= 200
    assert max(tl["running_requests"]) <= LOAD["concurrency"]
    assert 0 < max(tl["kv_used_tokens"]) <= tl["kv_capacity_tokens"]


@pytest.mark.parametrize("slo", [{"ttft_ms": 0}, {"tpot_ms": -3.0}, {"e2e_ms": float("nan")}, {"ttfb_ms": 5}])
def test_bad_slo_in_the_library_names_the_field(slo):
    with pytest.raises(MoesimError) as err:
        serve(load_scenario(None, CHEAP), make_load(**LOAD), slo=slo)
    assert err.value.field == f"slo.{next(iter(slo))}"


@pytest.mark.parametrize("flag, value", [("--slo-ttft-ms", "0"), ("--slo-tpot-ms", "-1"), ("--slo-e2e-ms", "nan"),
                                         ("--slo-ttft-ms", "-0.5")])
def test_cli_bad_slo_is_one_error_line_exit_2(tmp_path, flag, value):
    report = tmp_path / "r.html"
    out = CliRunner().invoke(main, ["serve", *CHEAP_FLAGS, *LOAD_FLAGS, flag, value, "--report", str(report)])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_goodput_in_json_and_table():
    runner = CliRunner()
    out = runner.invoke(main, ["serve", *CHEAP_FLAGS, *LOAD_FLAGS, "--slo-ttft-ms", "1e9", "--slo-tpot-ms", "1e9"])
    assert out.exit_code == 0, out.output
    assert "goodput (TTFT <= 1e+09 ms, TPOT <= 1e+09 ms): 100.0% of requests meet the SLOs" in out.stdout


@pytest.mark.parametrize("suffix", [".html", ".pdf"])
def test_cli_report_has_the_tables_and_figures(tmp_path, suffix):
    report = tmp_path / f"serve{suffix}"
    out = CliRunner().invoke(main, ["serve", *CHEAP_FLAGS, *LOAD_FLAGS, "--slo-ttft-ms", "30", "--slo-tpot-ms", "9",
                                    "--report", str(report)])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [report.name]   # no temporary file left
    data = report.read_bytes()
    if suffix == ".pdf":
        assert data[:5] == b"%PDF-" and data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") >= 3
        return
    text = data.decode()
    for needle in ("Serving under load: qwen3-30b-a3b", "Latency percentiles (ms)", "Goodput under SLOs",
                   "TTFT &lt;= 30 ms", "Latency distributions", "Batch and KV over time", "Assumptions",
                   "concurrency 8", "ISL 256, OSL 32", "DistServe"):
        assert needle in text, needle
    assert len(PNG.findall(text)) == 2


def test_cli_report_without_slo_has_no_goodput(tmp_path):
    report = tmp_path / "serve.html"
    out = CliRunner().invoke(main, ["serve", *CHEAP_FLAGS, *LOAD_FLAGS, "--report", str(report)])
    assert out.exit_code == 0, out.output
    text = report.read_text()
    assert "Goodput" not in text and "Latency distributions" in text and len(PNG.findall(text)) == 2


def test_cli_failed_run_leaves_no_report(tmp_path):
    report = tmp_path / "serve.html"
    out = CliRunner().invoke(main, ["serve", *CHEAP_FLAGS, "--concurrency", "2", "--isl", "100000000", "--osl", "8",
                                    "--slo-ttft-ms", "100", "--report", str(report)])
    assert out.exit_code == 2 and out.stderr.startswith("error:"), out.output
    assert list(tmp_path.iterdir()) == []


def test_saved_serve_json_reads_as_serve(tmp_path):
    """`moesim report` of a saved `serve --json` (disaggregated too) is a serve section, without the
    per-request distributions (the JSON has none) and with the timeline."""
    saved = tmp_path / "serve.json"
    out = CliRunner().invoke(main, ["serve", *CHEAP_FLAGS, *LOAD_FLAGS, "--mode", "disagg", "--prefill-workers", "1",
                                    "--decode-workers", "1", "--json"])
    assert out.exit_code == 0, out.output
    saved.write_text(out.stdout)
    kind, data = read_input(saved)
    assert kind == "serve"
    report = tmp_path / "r.html"
    write_report([(kind, data, str(saved))], str(report))
    text = report.read_text()
    assert "Batch and KV over time" in text and "Latency distributions" not in text and "decode pool" in text
    assert "Pools" in text and "KV transfers prefill -&gt; decode" in text
    assert len(PNG.findall(text)) == 1


def test_plan_report_has_the_front_when_served(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("name: tiny-load\nmodels: [qwen3-30b-a3b]\nsystems: [{name: dgx-h100, gpus: [2]}]\n"
                     "parallel: [{tp: 1, ep: gpus}]\nload: {concurrency: 4, isl: 256, osl: 16, requests: 16}\n")
    result = plan(search_space.load_space(space))
    report = tmp_path / "plan.html"
    write_report([("plan", result, "tiny-load")], str(report))
    text = report.read_text()
    assert "Throughput-interactivity front" in text and "Pareto front" in text
    assert len(PNG.findall(text)) == 2
