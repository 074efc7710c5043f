"""Headless Chromium for the browser tests: Debian's ``chromium`` package, driven by Playwright
for Python with its executable path set — never a browser download (``playwright install`` is
not used). Missing and root: installed with apt-get on first use, like PostgreSQL."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conflux.core.errors import StackError

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium(env_path: str | None = None) -> Path | None:
    """``CONFLUX_CHROMIUM`` when set, else Debian's ``/usr/bin/chromium`` (or one on PATH)."""
    if env_path:
        return Path(env_path)
    for candidate in CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    found = shutil.which("chromium")
    return Path(found) if found else None


def ensure_chromium() -> Path:
    """The Chromium executable, installing Debian's package when it is missing (root only).

    Raises:
        StackError: not found and not installable, or ``CONFLUX_CHROMIUM`` names no file.
    """
    env_path = os.environ.get("CONFLUX_CHROMIUM")
    found = find_chromium(env_path)
    if found is None:
        from conflux.stack.apt import apt_install

        apt_install(["chromium"], who="browser",
                    instead="install it (sudo apt-get install chromium) or point "
                            "CONFLUX_CHROMIUM at a Chromium executable")
        found = find_chromium()
    if found is None or not found.exists():
        raise StackError(f"browser: no Chromium at {found or ', '.join(CANDIDATES)}"
                         + (" (CONFLUX_CHROMIUM)" if env_path else ""))
    return found


def launch_args() -> list[str]:
    """Chromium flags for a headless run on a server: no sandbox as root (Chromium refuses to
    start sandboxed as root), no GPU, /tmp instead of a small /dev/shm."""
    args = ["--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args
