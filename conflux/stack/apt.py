"""Debian packages the tooling installs when they are missing: PostgreSQL for the stack,
Chromium for the browser tests. Root only (as on this kind of machine); the output goes to
``/tmp/conflux-apt.log``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conflux.core.errors import StackError
from conflux.stack.service import run_checked

APT_LOG = Path("/tmp/conflux-apt.log")


def apt_install(packages: list[str], *, who: str, instead: str) -> None:
    """``apt-get update`` then ``apt-get install -y --no-install-recommends PACKAGES``.

    Args:
        packages: Debian package names.
        who: the component asking (prefix of messages, e.g. ``postgres``).
        instead: what a non-root user should do instead (shown in the error).

    Raises:
        StackError: not root, or apt-get failed (its log named).
    """
    if os.geteuid() != 0:
        raise StackError(f"{who}: {' '.join(packages)} not found and only root may install it; "
                         f"{instead}")
    print(f"{who}: installing Debian's {' '.join(packages)} (first use only)...",
          file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked(["apt-get", "update"], what=f"{who}: apt-get update", log=APT_LOG, timeout=600,
                env=env)
    run_checked(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                what=f"{who}: apt-get install {' '.join(packages)}", log=APT_LOG, timeout=900,
                env=env)
