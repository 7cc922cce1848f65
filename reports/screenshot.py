"""Render a moesim HTML report in headless Chromium (Selenium + the system chromedriver), check it
and save a screenshot. Used by tests/test_report_browser.py and to make the README's picture:

    moesim simulate --report reports/examples/default.html
    python reports/screenshot.py reports/examples/default.html reports/examples/default.png

Checks: every <img> has loaded (complete, naturalWidth > 0), the browser logged no console
error, the page made no network request. Exit status 0 when all hold, 1 otherwise.
Needs `pip install selenium` and Debian's `chromium` + `chromium-driver` (or CHROME_BIN /
CHROMEDRIVER pointing at another pair).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHROME_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
NETWORK_SCHEMES = ("http", "https", "ws", "wss", "ftp")  # chrome:// pages of the browser itself are not the report's


def browser_paths() -> tuple[str | None, str | None]:
    """(browser, chromedriver) found on this machine, or None for what is missing."""
    chrome = os.environ.get("CHROME_BIN") or next((p for c in CHROME_CANDIDATES if (p := shutil.which(c))), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return chrome, driver


def missing() -> str | None:
    """Why the browser check cannot run here, in one line, or None when it can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    chrome, driver = browser_paths()
    if chrome is None:
        return "no Chromium on PATH (apt-get install chromium chromium-driver)"
    if driver is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def render(html: str | Path, png: str | Path, *, width: int = 1280, height: int = 2400) -> dict:
    """Open `html` in headless Chromium, take a full-width screenshot into `png`, and return
    {"images": [{src, complete, naturalWidth}], "console_errors": [...], "requests": [...]}."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    profile = tempfile.mkdtemp(prefix="moesim-chromium-")
    # flags from the workplace notes: this machine has no network, so background services must stay off
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(Path(html).resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete,"
            " naturalWidth: i.naturalWidth}));")
        full_height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(width, min(max(int(full_height), 600), 16000))
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
        console = driver.get_log("browser")
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                requests.append(message["params"]["request"]["url"][:80])
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    errors = [e["message"] for e in console if e.get("level") == "SEVERE"]
    return {"images": images, "console_errors": errors, "requests": requests}


def problems(outcome: dict) -> list[str]:
    """What is wrong with a rendered report (empty when nothing is)."""
    out = []
    if not outcome["images"]:
        out.append("the page has no images")
    out += [f"image {i} did not load ({img['src']}...)" for i, img in enumerate(outcome["images"])
            if not img["complete"] or img["naturalWidth"] <= 0]
    out += [f"console error: {e}" for e in outcome["console_errors"]]
    out += [f"network request: {u}" for u in outcome["requests"] if u.split(":", 1)[0] in NETWORK_SCHEMES]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python reports/screenshot.py REPORT.html SCREENSHOT.png", file=sys.stderr)
        return 2
    why = missing()
    if why:
        print(f"error: cannot render: {why}", file=sys.stderr)
        return 2
    outcome = render(argv[0], argv[1])
    found = problems(outcome)
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    print(f"{len(outcome['images'])} images loaded, {len(outcome['console_errors'])} console errors; wrote {argv[1]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
