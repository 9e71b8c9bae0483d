"""Render an HTML page in headless Chromium: a screenshot (PNG) and the DOM as the browser built it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from skinscan.errors import MissingDependency

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise MissingDependency("no Chromium found (Debian: apt-get install chromium)")


def render(
    html_file: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    height: int = 2400,
    timeout: float = 90,
) -> str:
    """Load the page in headless Chromium; write a screenshot if asked; return the rendered DOM."""
    exe = find_chromium()
    url = Path(html_file).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout).stdout
        if screenshot:
            subprocess.run(
                [*base, f"--screenshot={Path(screenshot).resolve()}", url],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
    return dom
