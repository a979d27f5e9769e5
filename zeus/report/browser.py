"""Open a report in a real headless browser (Debian's ``chromium``) and take a screenshot of it.

Used by ``zeus report --screenshot`` and by the tests, to check that the HTML renders, not only that it exists.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from shared.errors import ZeusError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in containers and CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS pixels into ``png``; raises ``ZeusError`` on failure."""
    browser = find_browser()
    if browser is None:
        raise ZeusError("no headless browser found: install Debian's chromium (`apt-get install chromium`)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zeus-chromium-") as profile:
        command = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            html.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=timeout, check=False)
    if result.returncode != 0 or not png.is_file():
        raise ZeusError(f"{browser} could not screenshot {html} (exit {result.returncode}): {result.stderr[-800:]}")
    return png
