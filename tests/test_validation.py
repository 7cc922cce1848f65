"""`moesim validate`: the schema's output, skips with reasons, errors for malformed files."""
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moesim.cli import main
from moesim.core.errors import MoesimError
from moesim.validation.cases import load_cases
from moesim.validation.run import validate

OPEN_CASES = Path(__file__).resolve().parents[1] / "validation" / "cases.yaml"

SMALL = {"cases": [
    {"id": "ar", "what": "collective", "system": "dgx-h100", "gpus": 8, "metric": "busbw_GBps", "measured": 368.0,
     "params": {"op": "all_reduce", "bytes": 8589934592, "dtype": "fp32"}, "source": "test"},
    {"id": "ep", "what": "ep_combine", "system": "dgx-h800", "gpus": 8, "metric": "bottleneck_GBps",
     "measured": 158, "params": {"experts": 256, "tokens_per_gpu": 4096, "hidden": 7168, "topk": 8,
                                 "dtype": "bf16", "mode": "normal", "bottleneck": "nvlink", "sms": 24, "nic": "CX7"},
     "source": "test"},
    {"id": "g", "what": "gemm", "system": "dgx-h100", "gpus": 1, "metric": "tflops", "measured": 1.0,
     "params": {}, "source": "test"},
    {"id": "t", "what": "training", "system": "dgx-h100", "gpus": 8, "metric": "mfu", "measured": 0.4,
     "params": {"model": "qwen3-30b-a3b"}, "source": "test"},
    {"id": "c", "what": "power", "system": "dgx-h100", "gpus": 1, "metric": "watts", "measured": 700.0,
     "params": {}, "source": "test"},
    {"id": "s", "what": "collective", "system": "dgx-h999", "gpus": 8, "metric": "busbw_GBps", "measured": 1.0,
     "params": {"op": "all_reduce", "bytes": 1024}, "source": "test"},
    {"id": "m", "what": "collective", "system": "dgx-h100", "gpus": 8, "metric": "furlongs", "measured": 1.0,
     "params": {"op": "all_reduce", "bytes": 1024}, "source": "test"},
]}


def write(tmp_path, data, name="cases.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_output_follows_the_schema(tmp_path):
    result = validate(load_cases(write(tmp_path, SMALL)))
    assert {c["id"] for c in result["cases"]} == {"ar", "ep"}
    for case in result["cases"]:
        assert set(case) >= {"id", "what", "metric", "measured", "predicted", "rel_error"}
        assert case["rel_error"] == pytest.approx((case["predicted"] - case["measured"]) / case["measured"])
    assert set(result["mape"]) == {"overall", "collective", "ep_combine"}
    skipped = {s["id"]: s["reason"] for s in result["skipped"]}
    assert "missing params" in skipped["g"] and "missing params" in skipped["t"]
    assert "not modelled yet" in skipped["c"] and "unknown kind" in skipped["c"]
    assert "unknown system" in skipped["s"] and "metric" in skipped["m"]
    ep = next(c for c in result["cases"] if c["id"] == "ep")
    assert "nic" in ep["ignored_params"] and "sms" not in ep["ignored_params"]  # the SM budget is modelled now


def test_cli_json_and_table(tmp_path):
    path = write(tmp_path, SMALL)
    runner = CliRunner()
    data = json.loads(runner.invoke(main, ["validate", "--cases", path, "--json"]).output)
    assert set(data) == {"cases", "mape", "bias", "skipped", "relabelled", "provenance"}
    assert data["relabelled"] == []  # only serving_load records are ever relabelled
    assert data["provenance"]["code"]["moesim"] and data["provenance"]["profile"] is None
    table = runner.invoke(main, ["validate", "--cases", path])
    assert table.exit_code == 0 and "MAPE" in table.output and "skipped 5 cases" in table.output


@pytest.mark.parametrize("text,field", [("cases: [1, 2", "line"), ("cases:\n  - id: x\n", "cases.0.what"),
                                        ("- 1\n- 2\n", "(top level)")])
def test_malformed_cases_file_is_an_error(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", "--cases", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0]


def test_open_cases_run_and_every_case_is_accounted_for():
    cases = load_cases(str(OPEN_CASES))
    result = validate(cases)
    assert len(result["cases"]) + len(result["skipped"]) == len(cases)
    print({k: f"{100 * v:.1f}%" for k, v in result["mape"].items()})


def test_memcpy_from_specs_and_from_a_calibration(tmp_path):
    cases = {"cases": [
        {"id": "hbm", "what": "memcpy", "system": "dgx-h100", "gpus": 1, "metric": "GBps", "measured": 2900.0,
         "params": {"path": "hbm", "op": "babelstream_copy"}, "source": "test"},
        {"id": "p2p", "what": "memcpy", "system": "dgx-h100", "gpus": 2, "metric": "GBps", "measured": 742.0,
         "params": {"path": "nvlink_p2p", "direction": "bidirectional", "engine": "copy_engine"}, "source": "test"}]}
    path = write(tmp_path, cases)
    fitted = {c["id"]: c["predicted"] for c in validate(load_cases(path))["cases"]}
    assert 0.8 * 3350.0 < fitted["hbm"] < 3350.0 and 0.8 * 900.0 < fitted["p2p"] < 900.0  # below spec rates
    synthetic = Path(__file__).resolve().parents[1] / "topologies" / "calibration" / "synthetic-dgx-h100.yaml"
    calibrated = {c["id"]: c["predicted"] for c in validate(load_cases(path), profile=str(synthetic))["cases"]}
    from moesim.calibration.profile import load_calibration
    profile = load_calibration(synthetic)  # its measured rates replace the fitted copy model on this GPU
    nvlink = next(fit for fit in profile.links.values() if fit.kind == "nvlink")
    assert calibrated["hbm"] == pytest.approx(3350.0 * profile.memory_efficiency.value)
    assert calibrated["p2p"] == pytest.approx(2 * nvlink.bandwidth_GBps.value)


def test_report_writes_a_parity_plot(tmp_path):
    path = write(tmp_path, SMALL)
    png = tmp_path / "parity.png"
    result = CliRunner().invoke(main, ["validate", "--cases", path, "--report", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_host_link_from_the_measured_h100_calibration(tmp_path):
    """The shipped H100 profile's fitted host link (pinned H2D) replaces the PCIe spec rate."""
    case = {"id": "h2d", "what": "memcpy", "system": "dgx-h100", "gpus": 1, "metric": "GBps", "measured": 51.0,
            "params": {"path": "host_to_device"}, "source": "test"}
    path = write(tmp_path, {"cases": [case]})
    measured = Path(__file__).resolve().parents[1] / "topologies" / "calibration" / "h100-sxm.yaml"
    spec = validate(load_cases(path))["cases"][0]["predicted"]
    calibrated = validate(load_cases(path), profile=str(measured))["cases"][0]["predicted"]
    from moesim.calibration.profile import load_calibration
    fitted = load_calibration(measured).links["host_to_device"].bandwidth_GBps.value
    assert spec < 64.0 and calibrated == pytest.approx(fitted) and 45 < fitted < 60


def test_one_profile_per_gpu(tmp_path):
    """Several profiles: each applies to the cases on its own GPU; two for one GPU are refused."""
    cases = {"cases": [
        {"id": f"hbm-{system}", "what": "memcpy", "system": system, "gpus": 1, "metric": "GBps", "measured": 1000.0,
         "params": {"path": "hbm"}, "source": "test"} for system in ("dgx-h100", "hgx-h200", "hgx-b200")]}
    path = write(tmp_path, cases)
    folder = Path(__file__).resolve().parents[1] / "topologies" / "calibration"
    h100, h200 = str(folder / "h100-sxm.yaml"), str(folder / "h200-sxm.yaml")
    spec = {c["id"]: c["predicted"] for c in validate(load_cases(path))["cases"]}
    both = {c["id"]: c["predicted"] for c in validate(load_cases(path), profile=[h100, h200])["cases"]}
    only = {c["id"]: c["predicted"] for c in validate(load_cases(path), profile=h100)["cases"]}
    assert both["hbm-dgx-h100"] == only["hbm-dgx-h100"] != spec["hbm-dgx-h100"]
    assert both["hbm-hgx-h200"] != spec["hbm-hgx-h200"] == only["hbm-hgx-h200"]
    assert both["hbm-hgx-b200"] == spec["hbm-hgx-b200"]
    with pytest.raises(MoesimError) as err:
        validate(load_cases(path), profile=[h100, h100])
    assert err.value.field == "--profile"
