"""``conflux init DIR``: scaffold a Conflux project of your own (one event dataset, one batch
join, a test), ready to run with ``pip install -e .`` and ``conflux dev`` from that folder."""

from __future__ import annotations

import keyword
import re
import string
import sys
from importlib import resources
from pathlib import Path

from conflux.core.errors import UsageError

TEMPLATE = "project_template"
PACKAGE_DIR = "__package__"


def package_name(folder: Path) -> str:
    """A Python package name from a folder name (``my-sensors`` → ``my_sensors``)."""
    name = re.sub(r"\W+", "_", folder.name.strip().lower()).strip("_")
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = f"project_{name}".rstrip("_")
    return name


def render_project(folder: Path, *, package: str, topic: str,
                   conflux_requirement: str) -> list[Path]:
    """Write the template into ``folder`` (which must be empty or missing); returns the files."""
    if not package.isidentifier() or keyword.iskeyword(package):
        raise UsageError(f"--package {package!r} is not a valid Python package name")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} exists and is not an empty folder: choose a new one")
    values = {"project": folder.name, "package": package, "topic": topic,
              "conflux_requirement": conflux_requirement}
    root = resources.files("conflux.cli") / TEMPLATE
    written = []
    for source in _walk(root):
        relative = Path(str(source).removeprefix(str(root)).lstrip("/"))
        relative = Path(*(package if part == PACKAGE_DIR else part for part in relative.parts))
        name = relative.name.removesuffix(".tmpl")
        target = folder / relative.parent / ("." + name if name == "gitignore" else name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(string.Template(source.read_text()).substitute(values))
        written.append(target)
    return sorted(written)


def _walk(folder):
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.name.endswith(".tmpl"):
            yield entry


def cmd_init(args) -> int:
    folder = Path(args.dir).expanduser().resolve()
    package = args.package or package_name(folder)
    files = render_project(folder, package=package, topic=args.topic or f"{package}.readings",
                           conflux_requirement=args.conflux)
    print(f"created {folder} ({len(files)} files): package {package}, catalog "
          f"{package}.catalog:DATASETS")
    print("next:\n"
          f"  cd {folder}\n"
          "  python -m venv .venv && . .venv/bin/activate\n"
          "  pip install -e '.[test]'     # installs Conflux too\n"
          "  pytest                       # the project's own tests\n"
          "  conflux dev                  # the stack, the Dagster UI and sample events",
          file=sys.stdout)
    return 0


def register(sub) -> None:
    """Add ``conflux init`` to the ``conflux`` parser."""
    init = sub.add_parser("init", help="scaffold a project of your own in DIR (one event "
                                       "dataset, one batch join, a test)")
    init.add_argument("dir", metavar="DIR", help="the new project's folder (new or empty)")
    init.add_argument("--package", help="its Python package (default: from DIR's name)")
    init.add_argument("--topic", help="the event dataset's Kafka topic "
                                      "(default: PACKAGE.readings)")
    init.add_argument("--conflux", default="conflux", metavar="REQUIREMENT",
                      help="how the project depends on Conflux (default 'conflux'; e.g. "
                           "'conflux @ file:///path/to/conflux' or a wheel's path)")
    init.set_defaults(func=cmd_init)
