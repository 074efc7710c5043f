"""The user's project: the folder whose ``pyproject.toml`` names the catalog Conflux runs.

A project is found from the working directory upwards: the first ``pyproject.toml`` with a
``[tool.conflux]`` table (else the first with ``[tool.dagster]``). ``CONFLUX_PROJECT`` names the
folder instead. Its table says::

    [tool.conflux]
    catalog = "my_pipelines.catalog:DATASETS"   # the dataset declarations (module:attribute)
    dev_producer = "my_pipelines.demo:produce"  # optional: what `conflux dev` runs for sample events

The stack keeps its state in ``<project>/.conflux`` (or ``CONFLUX_HOME``), the Dagster processes
run from the project folder and load its ``workspace.yaml``, else a workspace made from
``[tool.dagster] module_name``.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conflux.core.errors import ConfigError, UsageError

PYPROJECT = "pyproject.toml"


@dataclass(frozen=True)
class Project:
    """Where a Conflux project lives and what its ``pyproject.toml`` declares."""

    root: Path
    catalog: str | None = None          # [tool.conflux] catalog, "module:attribute"
    dev_producer: str | None = None     # [tool.conflux] dev_producer, "module:function"
    dagster_module: str | None = None   # [tool.dagster] module_name
    dagster_attribute: str | None = None  # [tool.dagster] attribute

    @classmethod
    def find(cls, env: Mapping[str, str] | None = None, start: Path | None = None) -> "Project":
        """The project of ``CONFLUX_PROJECT``, else the nearest one above ``start`` (the working
        directory); a folder with no ``pyproject.toml`` above it is a project with no catalog."""
        env = os.environ if env is None else env
        named = env.get("CONFLUX_PROJECT")
        if named:
            root = Path(named).expanduser().resolve()
            if not root.is_dir():
                raise ConfigError(f"CONFLUX_PROJECT={named!r} is not a folder")
            return cls.load(root)
        here = (start or Path.cwd()).resolve()
        candidates = [here, *here.parents]
        tables = [(folder, _tool_tables(folder)) for folder in candidates
                  if (folder / PYPROJECT).is_file()]
        for folder, tools in tables:
            if "conflux" in tools:
                return cls.load(folder)
        for folder, tools in tables:
            if "dagster" in tools:
                return cls.load(folder)
        return cls(root=here)

    @classmethod
    def load(cls, root: Path) -> "Project":
        tools = _tool_tables(root) if (root / PYPROJECT).is_file() else {}
        conflux = tools.get("conflux", {})
        dagster = tools.get("dagster", {})
        unknown = sorted(set(conflux) - {"catalog", "dev_producer"})
        if unknown:
            raise ConfigError(f"{root / PYPROJECT}: unknown key(s) in [tool.conflux]: "
                              f"{', '.join(unknown)} (known: catalog, dev_producer)")
        for key in ("catalog", "dev_producer"):
            if key in conflux and not _is_target(conflux[key]):
                raise ConfigError(f"{root / PYPROJECT}: [tool.conflux] {key} = "
                                  f"{conflux[key]!r} must look like 'package.module:ATTRIBUTE'")
        return cls(root=root, catalog=conflux.get("catalog"),
                   dev_producer=conflux.get("dev_producer"),
                   dagster_module=dagster.get("module_name"),
                   dagster_attribute=dagster.get("attribute"))

    @property
    def workspace_file(self) -> Path | None:
        """The project's own ``workspace.yaml``, if it has one."""
        path = self.root / "workspace.yaml"
        return path if path.is_file() else None

    def workspace_yaml(self) -> str:
        """A workspace loading ``[tool.dagster] module_name`` (for a project without its own
        ``workspace.yaml``)."""
        if not self.dagster_module:
            raise ConfigError(f"{self.root}: no workspace.yaml and no [tool.dagster] module_name "
                              f"in {PYPROJECT}: Dagster has nothing to load")
        attribute = f"\n      attribute: {self.dagster_attribute}" if self.dagster_attribute else ""
        return ("load_from:\n  - python_module:\n"
                f"      module_name: {self.dagster_module}{attribute}\n"
                f"      working_directory: {self.root}\n"
                f"      location_name: {self.root.name}\n")

    def import_target(self, spec: str, what: str):
        """Import ``module:attribute`` with the project folder importable."""
        module_name, _, attr = spec.partition(":")
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load {what} {spec!r} (project {self.root}): {exc}") from exc
        except Exception as exc:  # the project's module itself failed while it was imported
            raise ConfigError(f"cannot load {what} {spec!r} (project {self.root}): "
                              f"{type(exc).__name__}: {exc}") from exc

    def load_catalog(self, spec: str | None = None) -> tuple:
        """The project's dataset declarations (``spec`` overrides ``[tool.conflux] catalog``)."""
        spec = spec or self.catalog
        if not spec:
            raise ConfigError(f"no catalog: {self.root} has no {PYPROJECT} with "
                              "[tool.conflux] catalog = 'package.module:DATASETS' "
                              "(run from your project's folder, set CONFLUX_PROJECT, or "
                              "create a project with `conflux init DIR`)")
        if not _is_target(spec):
            raise ConfigError(f"catalog {spec!r} must look like 'package.module:ATTRIBUTE'")
        datasets = self.import_target(spec, "catalog")
        try:
            return tuple(datasets.values() if isinstance(datasets, Mapping) else datasets)
        except TypeError:
            raise ConfigError(f"catalog {spec!r} is a {type(datasets).__name__}, not a "
                              "sequence of datasets") from None


def _is_target(value: object) -> bool:
    if not isinstance(value, str):
        return False
    module, sep, attr = value.partition(":")
    return bool(sep and module and attr.isidentifier()
                and all(part.isidentifier() for part in module.split(".")))


def _tool_tables(folder: Path) -> dict:
    path = folder / PYPROJECT
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def load_catalog(spec: str | None = None) -> tuple:
    """The current project's declarations, validated (``spec``: a ``module:attribute`` override)."""
    from conflux.core.declarations import validate_catalog

    datasets = Project.find().load_catalog(spec)
    validate_catalog(datasets)
    return datasets


def catalog_by_name(spec: str | None = None) -> dict:
    """The current project's datasets by name."""
    from conflux.core.declarations import validate_catalog

    return validate_catalog(Project.find().load_catalog(spec))


def dataset_named(name: str, spec: str | None = None):
    """One dataset of the current project's catalog, or a UsageError listing the declared ones."""
    catalog = catalog_by_name(spec)
    if name not in catalog:
        raise UsageError(f"unknown dataset {name!r}; declared: {', '.join(sorted(catalog))}")
    return catalog[name]
