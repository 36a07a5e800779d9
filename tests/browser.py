"""Browser fixtures: Debian's Chromium (/usr/bin/chromium, installed by scripts/setup.sh) driven by Playwright,
WebGL2 through SwiftShader, and helpers to wait for the splat viewer to draw and to screenshot it.

Registered in tests/conftest.py through ``pytest_plugins``. Never run ``playwright install``: the browser is
the system package.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("SPACEPORT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
# SwiftShader renders on the CPU, and this machine's 2 cores are shared: be patient, never time-sensitive
VIEWER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup.sh` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own context: no shared storage) at device pixel ratio 1; console errors and page
    errors are collected in ``page.spaceport_errors`` for failure messages."""
    context = browser.new_context(viewport={"width": 640, "height": 480}, device_scale_factor=1)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type in ("error", "warning") else None)
    new_page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    new_page.spaceport_errors = errors
    try:
        yield new_page
    finally:
        context.close()


def wait_for_viewer(page, timeout_ms: int = VIEWER_TIMEOUT_MS) -> dict:
    """Wait until the viewer has drawn the loaded splat from a still camera (``spaceportViewer.ready``),
    and return its state; fail with the viewer's error and the page's console when it could not."""
    page.wait_for_function(
        "() => window.spaceportViewer && (window.spaceportViewer.ready || window.spaceportViewer.error)",
        timeout=timeout_ms,
    )
    state = page.evaluate(
        "() => { const v = window.spaceportViewer; return {ready: v.ready, error: v.error, "
        "splatCount: v.splatCount, readyFrames: v.readyFrames, pose: v.cameraPose()}; }"
    )
    if state["error"]:
        raise AssertionError(f"viewer error: {state['error']}\n" + "\n".join(page.spaceport_errors))
    return state


def viewer_screenshot(page, path: Path | None = None) -> np.ndarray:
    """The viewer's canvas as an (H, W, 3) uint8 array, without the panel drawn over it; saved as PNG at
    ``path`` when given."""
    page.add_style_tag(content=".spv-panel, .spv-loading, .spv-error { visibility: hidden !important; }")
    png = page.locator("canvas.spv-canvas").screenshot(animations="disabled")
    page.add_style_tag(content=".spv-panel { visibility: visible !important; }")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@contextmanager
def run_viewer(target: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run the real `spaceport view TARGET --port 0 --no-browser` and yield the URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spaceport", "view", str(target), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = _read_url(process, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_url(process: subprocess.Popen, timeout_s: float) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if re.match(r"^http://127\.0\.0\.1:\d+/$", line.strip()):
                found.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"`spaceport view` printed no URL within {timeout_s:.0f} s; stderr:\n{stderr}")
    return found[0]
