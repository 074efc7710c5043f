"""The lock files (issue 17, point 6): what make, CI and the Dockerfile install.

requirements/dev.lock and requirements/runtime.lock are made by ``make lock`` from pyproject.toml.
These tests hold them to it: every dependency pyproject names is pinned in the lock that should
carry it, at a version its specifier allows; every pin has hashes; the runtime lock carries no
test-only package and agrees with the dev lock; the digest header matches pyproject (what
``make install`` checks first); and the Makefile and Dockerfile install from the locks with
--require-hashes and the project itself with --no-deps.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
BOOTSTRAP_LOCK = ROOT / "requirements" / "bootstrap.lock"
# the lock is resolved for this interpreter and platform (make lock); markers are judged for it
ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _check_lock_module():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lock = _check_lock_module()


def parse_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """name -> (its requirement line, its hashes); every entry is one logical line."""
    text = path.read_text()
    logical = re.sub(r"\\\n", " ", text)  # join the backslash continuations
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: option line {line!r} (no -e, -r, -c, --index-url)"
        parts = line.split()
        hashes = [p.removeprefix("--hash=") for p in parts[1:] if p.startswith("--hash=")]
        assert len(hashes) == len(parts) - 1, f"{path.name}: unexpected options in {line!r}"
        req = Requirement(parts[0])
        name = canonicalize_name(req.name)
        assert name not in entries, f"{path.name}: {name} pinned twice"
        entries[name] = (req, hashes)
    return entries


def pinned_version(req: Requirement) -> Version:
    (spec,) = req.specifier
    assert spec.operator == "==" and "*" not in spec.version, f"{req} is not an exact pin"
    return Version(spec.version)


def declared(extras: list[str]) -> list[Requirement]:
    """pyproject's runtime dependencies plus those of the given extras, conflux[...] expanded."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out, todo, seen = [], list(extras), set()
    out += [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in optional[extra]:
            req = Requirement(r)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


@pytest.fixture(scope="module")
def dev_lock():
    return parse_lock(DEV_LOCK)


@pytest.fixture(scope="module")
def runtime_lock():
    return parse_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def bootstrap_lock():
    return parse_lock(BOOTSTRAP_LOCK)


def assert_covers(lock, requirements, lock_name):
    missing, unsatisfied = [], []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        name = canonicalize_name(req.name)
        if name not in lock:
            missing.append(str(req))
        elif not req.specifier.contains(pinned_version(lock[name][0]), prereleases=True):
            unsatisfied.append(f"{req} (locked {lock[name][0]})")
    assert not missing, f"{lock_name} lacks {missing}: run make lock"
    assert not unsatisfied, f"{lock_name} pins outside pyproject's specifiers: {unsatisfied}: run make lock"


def test_dev_lock_covers_runtime_and_every_extra(dev_lock):
    extras = list(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])
    assert {"deploy", "test", "dev"} <= set(extras)
    assert_covers(dev_lock, declared(extras), "requirements/dev.lock")


def test_runtime_lock_covers_runtime_and_deploy(runtime_lock):
    assert_covers(runtime_lock, declared(["deploy"]), "requirements/runtime.lock")


def test_bootstrap_lock_carries_pip_and_the_build_requirements(dev_lock, runtime_lock, bootstrap_lock):
    build = [Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]]
    # requirements/bootstrap.in, what make lock resolves them from: pip + build-system.requires
    bootstrap_in = [Requirement(l.strip()) for l in
                    (ROOT / "requirements" / "bootstrap.in").read_text().splitlines()
                    if l.strip() and not l.startswith("#")]
    assert sorted(map(str, bootstrap_in)) == sorted(map(str, [Requirement("pip"), *build]))
    for lock, name in [(bootstrap_lock, "bootstrap"), (dev_lock, "dev"), (runtime_lock, "runtime")]:
        assert_covers(lock, bootstrap_in, f"requirements/{name}.lock")
    # pip >= 23.3 holds a dependency's extra (gql[requests]) to the locked version
    assert pinned_version(bootstrap_lock["pip"][0]) >= Version("23.3")
    # the same versions as the dependency locks (bootstrap.lock is constrained to dev.lock)
    for name, (req, _) in bootstrap_lock.items():
        assert pinned_version(req) == pinned_version(dev_lock[name][0]), name


def test_runtime_lock_has_no_test_only_package_and_agrees_with_dev(dev_lock, runtime_lock):
    # (pyyaml is in the test extra and in the runtime lock too: dagster itself needs it; so is
    # jsonschema: confluent-kafka[json]'s JSONSerializer validates with it)
    test_only = {"pytest", "pytest-timeout", "moto", "boto3", "flask", "playwright", "duckdb",
                 "pyflakes"}
    assert test_only <= {canonicalize_name(r.name) for r in declared(["test"])} | {"boto3", "flask"}
    assert not test_only & set(runtime_lock), test_only & set(runtime_lock)
    # the image runs the versions CI tested: every runtime pin is the dev lock's pin
    differ = {n: (str(r), str(dev_lock.get(n, (None,))[0])) for n, (r, _) in runtime_lock.items()
              if n not in dev_lock or pinned_version(r) != pinned_version(dev_lock[n][0])}
    assert not differ, differ


@pytest.mark.parametrize("path", [DEV_LOCK, RUNTIME_LOCK, BOOTSTRAP_LOCK], ids=lambda p: p.name)
def test_every_pin_is_exact_and_hashed_and_nothing_local(path):
    entries = parse_lock(path)
    assert len(entries) > (2 if path == BOOTSTRAP_LOCK else 50)
    for name, (req, hashes) in entries.items():
        pinned_version(req)
        assert req.url is None, f"{path.name}: {name} from a URL ({req.url})"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    assert "conflux" not in entries, f"{path.name} pins the project itself"
    assert "file://" not in path.read_text() and "-e " not in path.read_text()


def test_lock_digest_matches_pyproject():
    """What make install checks before installing (scripts/check_lock.py)."""
    text = PYPROJECT.read_text()
    locks = {name: (ROOT / name).read_text() for name in check_lock.LOCKS}
    assert set(check_lock.LOCKS) == {f"requirements/{n}.lock" for n in ("bootstrap", "dev", "runtime")}
    assert check_lock.problems(text, locks) == [], "run make lock"


def test_check_lock_notices_a_dependency_change_but_not_a_comment():
    text = PYPROJECT.read_text()
    digest = check_lock.deps_digest(text)
    locks = {name: f"{check_lock.HEADER}{digest}\nsix==1.17.0\n" for name in check_lock.LOCKS}
    assert check_lock.problems(text, locks) == []
    commented = text.replace("dependencies = [", "dependencies = [\n    # a comment", 1)
    assert commented != text and check_lock.problems(commented, locks) == []
    added = text.replace("dependencies = [", 'dependencies = [\n    "six>=1",', 1)
    assert added != text
    found = check_lock.problems(added, locks)
    assert len(found) == len(locks) and all("stale" in p for p in found)
    extra = text.replace('"pytest>=8,<10",', '"pytest>=8,<10",\n    "six>=1",', 1)
    assert extra != text and len(check_lock.problems(extra, locks)) == len(locks)
    build = text.replace('"setuptools>=69"', '"setuptools>=70"', 1)
    assert build != text and len(check_lock.problems(build, locks)) == len(locks)
    assert check_lock.problems(text, {"requirements/dev.lock": None}) == ["requirements/dev.lock is missing"]
    assert "no '# pyproject-deps-sha256:'" in check_lock.problems(text, {"x.lock": "six==1\n"})[0]


def _recipe(makefile: str, target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n|\s*\n)*)", makefile, re.M)
    assert match, f"no {target} target"
    return match.group(1)


def test_make_install_installs_from_the_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(LOCKS\)$", makefile, re.M)
    assert re.search(r"^LOCKS := requirements/bootstrap\.lock requirements/dev\.lock "
                     r"requirements/runtime\.lock$", makefile, re.M)
    assert "cat pyproject.toml $(LOCKS)" in makefile  # the stamp's name changes with either
    recipe = _recipe(makefile, "$(STAMP)")
    steps = [l.strip() for l in recipe.splitlines() if l.strip()]
    check = steps.index("$(PY) scripts/check_lock.py")
    bootstrap = steps.index("$(PIP) --require-hashes -r requirements/bootstrap.lock")
    install = steps.index("$(PIP) --require-hashes -r requirements/dev.lock")
    project = steps.index("$(PIP) --no-deps --no-build-isolation -e .")
    assert check < bootstrap < install < project
    assert re.search(r"^PIP := \$\(BIN\)/python -m pip install ", makefile, re.M)
    assert "[dev]" not in recipe and "pip install -e" not in recipe
    lock = _recipe(makefile, "lock")
    assert "--generate-hashes" in makefile and "--python-version 3.11" in makefile
    for name in ("dev", "runtime", "bootstrap"):
        assert f"-o requirements/{name}.lock" in lock
    assert "scripts/check_lock.py --stamp" in lock


def test_dockerfile_installs_from_the_runtime_lock_with_hashes():
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    runs = [l.strip() for l in docker.splitlines() if "pip install" in l]
    assert runs == ["RUN pip install --require-hashes -r requirements/bootstrap.lock \\",
                    "&& pip install --require-hashes -r requirements/runtime.lock",
                    "RUN pip install --no-deps --no-build-isolation . && pip check \\"]
    assert "COPY requirements/bootstrap.lock requirements/runtime.lock ./requirements/" in docker
    assert docker.index("requirements/runtime.lock") < docker.index("--no-deps")


def test_ci_installs_through_make():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "pip install" not in ci
