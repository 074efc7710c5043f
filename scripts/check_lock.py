"""Is requirements/*.lock still the lock of pyproject.toml's dependencies?

``make lock`` resolves pyproject.toml (runtime dependencies, the extras) and
requirements/bootstrap.in (pip, the build requirements) into pinned, hashed lock files, then runs ``check_lock.py --stamp``: each lock gets a header line
with a digest of the dependency declarations it was made from. ``make install`` runs
``check_lock.py`` before installing: a pyproject.toml whose dependencies (or extras, or
build-system.requires, or requires-python) changed since the lock was made fails here, naming
the command that fixes it, instead of silently installing the old set.

Standard library only: it runs with the interpreter that creates the venv, before the venv exists.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
# lock file -> what it holds (make lock resolves each from pyproject.toml)
LOCKS = {
    "requirements/bootstrap.lock": "pip and the build requirements, installed first (make, Dockerfile)",
    "requirements/dev.lock": "runtime + extras deploy and test + bootstrap (make, CI)",
    "requirements/runtime.lock": "runtime + extra deploy + bootstrap (deploy/Dockerfile)",
}
HEADER = "# pyproject-deps-sha256: "


def deps_digest(pyproject_text: str) -> str:
    """Digest of what a lock is resolved from, insensitive to comments and formatting."""
    data = tomllib.loads(pyproject_text)
    project = data.get("project", {})
    declared = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system.requires": data.get("build-system", {}).get("requires", []),
    }
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(HEADER):
            return line[len(HEADER):].split()[0]
    return None


def problems(pyproject_text: str, locks: dict[str, str | None]) -> list[str]:
    """What is wrong with the locks (path -> text, None when missing) for this pyproject."""
    want = deps_digest(pyproject_text)
    out = []
    for path, text in locks.items():
        if text is None:
            out.append(f"{path} is missing")
        elif recorded_digest(text) is None:
            out.append(f"{path} has no '{HEADER.strip()}' line (not made by `make lock`)")
        elif recorded_digest(text) != want:
            out.append(f"{path} is stale: pyproject.toml's dependencies changed since it was made")
    return out


def stamp(path: Path, digest: str) -> None:
    lines = [l for l in path.read_text().splitlines() if not l.startswith(HEADER)]
    path.write_text("\n".join([HEADER + digest, *lines]) + "\n")


def main(argv: list[str]) -> int:
    text = PYPROJECT.read_text()
    paths = {name: ROOT / name for name in LOCKS}
    if argv[1:] == ["--stamp"]:
        digest = deps_digest(text)
        for path in paths.values():
            stamp(path, digest)
        return 0
    if argv[1:]:
        print("usage: check_lock.py [--stamp]", file=sys.stderr)
        return 2
    found = problems(text, {n: p.read_text() if p.exists() else None for n, p in paths.items()})
    for line in found:
        print(f"check_lock: {line}", file=sys.stderr)
    if found:
        print("check_lock: run `make lock` (and commit requirements/*.lock with pyproject.toml)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
