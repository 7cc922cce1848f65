"""moesim report: input detection, the self-contained HTML, escaping, the PDF, the CLI shortcuts
and the failure contract (one line, exit 2, no file). The browser check is test_report_browser.py."""
from __future__ import annotations

import base64
import copy
import json
import re
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.planning.planner import plan
from moesim.planning.space import load_space
from moesim.present import report
from moesim.sim.simulate import simulate
from moesim.validation.cases import load_cases
from moesim.validation.run import validate

pypdf = pytest.importorskip("pypdf")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"model": "qwen3-30b-a3b", "gpus": 16, "parallel.ep": 8, "parallel.pp": 2, "runtime.framework": "megatron",
         "dtypes.weights": "bf16", "dtypes.kv_cache": "bf16",
         "workload": {"kind": "training", "seq_len": 4096, "micro_batch": 1, "global_batch": 64}}
SIMULATE_FIGURES = 6  # timeline, op classes, expert heatmap, GPU load, traffic, VRAM


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One real output of each kind, written as the CLI writes them."""
    folder = tmp_path_factory.mktemp("inputs")
    serving = simulate(load_scenario(None, {}), skew="zipf:1.0")
    training = simulate(load_scenario(None, TRAIN))
    planned = plan(load_space(ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml"))
    cases = folder / "cases.yaml"
    cases.write_text(
        "cases:\n"
        "- {id: hbm, what: memcpy, system: dgx-h100, gpus: 1, metric: GBps, measured: 2900.0,"
        " params: {path: hbm}, source: test}\n"
        "- {id: p2p, what: memcpy, system: dgx-h100, gpus: 2, metric: GBps, measured: 742.0,"
        " params: {path: nvlink_p2p, direction: bidirectional}, source: test}\n")
    validated = validate(load_cases(str(cases)))
    files = {}
    for name, data in (("simulate", serving), ("training", training), ("plan", planned), ("validate", validated)):
        from moesim.core.result import to_json
        path = folder / f"{name}.json"
        path.write_text(to_json(data))
        files[name] = path
    return files


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_kind_is_detected(outputs):
    assert [report.read_input(outputs[k])[0] for k in ("simulate", "training", "plan", "validate")] == \
        ["simulate", "simulate", "plan", "validate"]
    assert report.detect({"pools": {"prefill": {}, "decode": {}}, "metrics": {}}) == "disaggregated"
    assert report.detect({"hello": 1}) is None and report.detect([1, 2]) is None


def test_simulate_html_is_self_contained_with_every_plot(outputs, tmp_path):
    out = report.build_report([str(outputs["simulate"])], str(tmp_path / "r.html"))
    html = out.read_text()
    images = _images(html)
    assert len(images) == SIMULATE_FIGURES == html.count("<img ")
    for png in images:
        width, height = _png_size(png)
        assert width > 300 and height > 200
    # nothing fetched: no external URL in any src/href, no script, no stylesheet link
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for text in ("deepseek-v3", "dgx-h100", "TP1 PP1 DP16 EP16", "seed", "zipf", "moesim 0.1.0",
                 "Routing skew", "Rates:", "Per-GPU timeline", "Dispatch traffic matrix", "VRAM per GPU"):
        assert text in html, text
    assert "imbalance max/mean" not in html  # the ratio is in the figure, drawn from details.gpu_load


def test_training_plan_and_validation_sections(outputs, tmp_path):
    names = [str(outputs[k]) for k in ("training", "plan", "validate")]
    html = report.build_report(names, str(tmp_path / "all.html")).read_text()
    assert html.count("<section") == 3
    # training: timeline (pipeline) + op classes + VRAM; plan: Pareto; validate: parity
    assert len(_images(html)) == 3 + 1 + 1
    assert "pipeline" in html and "Pareto front" in html and "Validation parity" in html
    assert "tpot_ms_max = 50" in html  # the SLO the Pareto figure draws


def test_script_in_a_model_name_is_escaped(outputs, tmp_path):
    data = json.loads(outputs["simulate"].read_text())
    evil = '<script>alert("x")</script>'
    data["model"] = evil
    data["scenario"] = evil + "&"
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    html = report.build_report([str(path)], str(tmp_path / "evil.html")).read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_pdf_holds_the_same_content(outputs, tmp_path):
    out = report.build_report([str(outputs["simulate"]), str(outputs["plan"])], str(tmp_path / "r.pdf"))
    reader = pypdf.PdfReader(str(out))
    text_pages = [p for p in reader.pages if "Assumptions" in (p.extract_text() or "")
                  or "About this report" in (p.extract_text() or "")]
    assert len(reader.pages) == len(text_pages) + SIMULATE_FIGURES + 1
    text = "\n".join(p.extract_text() or "" for p in text_pages)
    for needle in ("deepseek-v3", "TP1 PP1 DP16 EP16", "Routing skew", "Pareto front", "dsv3-fp8-decode-example"):
        assert needle in text, needle
    assert reader.metadata.title.startswith("moesim report")


def test_same_input_gives_the_same_bytes(outputs, tmp_path):
    for suffix in (".html", ".pdf"):
        a = report.build_report([str(outputs["simulate"])], str(tmp_path / f"a{suffix}")).read_bytes()
        b = report.build_report([str(outputs["simulate"])], str(tmp_path / f"b{suffix}")).read_bytes()
        assert a == b, suffix


def test_an_input_without_details_still_reports(outputs, tmp_path):
    data = json.loads(outputs["simulate"].read_text())
    for key in ("details", "provenance"):
        data.pop(key)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    html = report.build_report([str(path)], str(tmp_path / "old.html")).read_text()
    assert len(_images(html)) == 2 and "not recorded in this input" in html


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not JSON"),
    ('{"hello": 1}', "not a moesim simulate, plan or validate output"),
])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not out.exists()


def test_missing_input_and_bad_suffix(outputs, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["report", str(tmp_path / "nope.json"), "-o", str(tmp_path / "r.html")])
    assert missing.exit_code == 2 and "cannot read" in missing.output
    suffix = runner.invoke(main, ["report", str(outputs["simulate"]), "-o", str(tmp_path / "r.docx")])
    assert suffix.exit_code == 2 and ".html, .pdf" in suffix.output and not (tmp_path / "r.docx").exists()
    # a bad suffix on the shortcut is refused before simulating
    shortcut = runner.invoke(main, ["simulate", "--report", str(tmp_path / "r.txt")])
    assert shortcut.exit_code == 2 and not (tmp_path / "r.txt").exists()


def test_a_broken_input_among_good_ones_writes_nothing(outputs, tmp_path):
    data = json.loads(outputs["simulate"].read_text())
    del data["memory"]["per_gpu"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    with pytest.raises(MoesimError) as err:
        report.build_report([str(outputs["plan"]), str(broken)], str(out))
    assert "per_gpu" in err.value.one_line() and not out.exists()


def test_simulate_and_plan_shortcuts(tmp_path):
    runner = CliRunner()
    sim = runner.invoke(main, ["simulate", "--report", str(tmp_path / "s.html")])
    assert sim.exit_code == 0, sim.output
    assert len(_images((tmp_path / "s.html").read_text())) == SIMULATE_FIGURES
    space = ROOT / "workloads" / "spaces" / "example-dsv3-decode.yaml"
    planned = runner.invoke(main, ["plan", str(space), "--report", str(tmp_path / "p.pdf")])
    assert planned.exit_code == 0, planned.output
    assert len(pypdf.PdfReader(str(tmp_path / "p.pdf")).pages) >= 2


def test_disaggregated_result_reports_both_pools(tmp_path):
    decode = load_scenario(None, {})
    prefill = load_scenario(None, {"workload.phase": "prefill", "workload.batch": 4})
    from moesim.sim.simulate import simulate_disaggregated
    data = copy.deepcopy(simulate_disaggregated(prefill, decode))
    out = report.write_report([("disaggregated", json.loads(json.dumps(data, default=float)), "pair")],
                              str(tmp_path / "d.html"))
    html = out.read_text()
    assert "prefill pool" in html and "decode pool" in html and len(_images(html)) == 2 * SIMULATE_FIGURES
