"""The HTML report in a real browser: headless Chromium (Selenium, system chromedriver) loads
the page, every figure decodes (naturalWidth > 0), the console has no error, nothing goes to the
network, and a screenshot is written. Skipped, with the reason, where no browser is installed;
CI sets MOESIM_REQUIRE_BROWSER=1 so that a missing browser fails there instead."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from moesim.cluster.scenario import load_scenario
from moesim.core.result import to_json
from moesim.present import report
from moesim.sim.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "reports" / "screenshot.py")
screenshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshot)

WHY = screenshot.missing()
if WHY and os.environ.get("MOESIM_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"MOESIM_REQUIRE_BROWSER=1 but {WHY}")
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no browser check: {WHY}")


def test_report_renders_in_chromium(tmp_path):
    result = simulate(load_scenario(None, {}), skew="zipf:1.2", placement="eplb")
    data = tmp_path / "sim.json"
    data.write_text(to_json(result))
    html = report.build_report([str(data)], str(tmp_path / "report.html"))
    png = tmp_path / "report.png"
    outcome = screenshot.render(html, png)
    assert len(outcome["images"]) == 6
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in outcome["images"]), outcome["images"]
    assert outcome["console_errors"] == []
    assert screenshot.problems(outcome) == []
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(header[16:20], "big") == 1280


def test_a_broken_image_is_caught(tmp_path):
    """The check can fail: an image whose data is not a PNG does not load."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>x</title></head><body>'
                    '<img src="data:image/png;base64,bm90IGEgcG5n" alt="broken"></body></html>')
    outcome = screenshot.render(page, tmp_path / "broken.png")
    assert any("did not load" in p for p in screenshot.problems(outcome))


def test_a_console_error_is_caught(tmp_path):
    page = tmp_path / "noisy.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>x</title></head><body>'
                    '<script>console.error("boom")</script></body></html>')
    outcome = screenshot.render(page, tmp_path / "noisy.png")
    assert any("boom" in p for p in screenshot.problems(outcome))
