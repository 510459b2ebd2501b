"""Check a report the way a person sees it: headless Chromium loads the page, counts images, takes a
screenshot.

Needs Debian's ``chromium`` package (``apt-get install chromium``); nothing else is downloaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from invismap.errors import InvismapError, file_error
from invismap.io import check_output_file

# Flags for a sandbox without network: no first-run UI, no background connections, a fresh profile.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--hide-scrollbars", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise InvismapError("headless Chromium not found (install it: apt-get install chromium)")


def _chromium(page: Path, *args: str, timeout: float = 120) -> str:
    page = Path(page).resolve()
    if not page.is_file():
        raise file_error(page, "report page not found", "run 'invismap run CONFIG' first")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [find_chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise InvismapError(f"chromium failed on {page} (exit {done.returncode}): "
                            f"{done.stderr.strip()[-300:]}")
    return done.stdout


def check_page(page: str | Path) -> tuple[int, int]:
    """``(images on the page, images that failed to load)`` after the page's load event."""
    dom = _chromium(Path(page), "--dump-dom", "--virtual-time-budget=15000")
    m = re.search(r'data-images="(\d+)"[^>]*data-broken="(\d+)"', dom)
    if not m:
        raise InvismapError(f"{page}: the page did not report its images (not an invismap report?)")
    return int(m.group(1)), int(m.group(2))


def screenshot(page: str | Path, out: str | Path, width: int = 1400, height: int = 9000) -> Path:
    """A ``width`` x ``height`` PNG of the page (tall enough for a whole report)."""
    check_output_file(out, (".png",))
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")  # renamed into place only once complete
    _chromium(Path(page), f"--screenshot={tmp}", f"--window-size={width},{height}",
              "--virtual-time-budget=15000")
    if not tmp.is_file():
        raise InvismapError(f"chromium wrote no screenshot to {out}")
    tmp.replace(out)
    return out
