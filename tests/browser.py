"""Rendering an HTML report in a real browser (Debian's chromium, driven by Python playwright
through its executable path; playwright's own browser download is never used).

:func:`chromium` finds chromium, installing Debian's package when it is missing and the test
may (CI=true or TOMOCLUST_BROWSER=1, as root, with apt-get); otherwise the test is skipped with
the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = ["chromium", "chromium-browser", "google-chrome"]


def chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    allowed = os.environ.get("CI") == "true" or os.environ.get("TOMOCLUST_BROWSER") == "1"
    if not allowed:
        pytest.skip("chromium not installed (CI=true or TOMOCLUST_BROWSER=1 installs Debian's)")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium not installed, and installing it needs apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    path = shutil.which("chromium")
    assert path, "apt-get installed chromium but it is not on PATH"
    return path


def render(html: Path, screenshot: Path, width: int = 1400, height: int = 1000,
           script: str | None = None):
    """Open ``html`` headless, wait until the page has settled, take a screenshot and return
    the value of ``script`` (a JavaScript function of no arguments) evaluated in the page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(html.resolve().as_uri(), wait_until="load", timeout=120_000)
            page.wait_for_timeout(1500)  # the report's React app renders after load
            result = page.evaluate(script) if script else None
            page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return result, errors
