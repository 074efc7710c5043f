"""Declare datasets in YAML: the ``ConfluxDatasets`` Dagster component.

A ``defs.yaml`` in a Dagster project's ``defs`` folder declares the same datasets as the Python
API, field for field, and the component compiles them with the same :func:`build_definitions`::

    type: conflux.ConfluxDatasets
    attributes:
      datasets:
        - name: readings
          mode: event
          contract: my_pkg.contracts:Reading      # module:attribute of a pydantic model
          key: [reading_id]
          event_time: day
          topics: [sensors.readings]
        - name: daily_temperature
          mode: batch
          contract: my_pkg.contracts:DailyTemperature
          key: [day, device_id]
          event_time: day
          upstream: [readings]
          compute: my_pkg.joins:daily_temperature
          schedule: "15 * * * *"

Each entry becomes an :class:`EventDataset` or :class:`BatchDataset`; the catalog is then checked
by :func:`validate_catalog`, so an invalid declaration raises the very ``DeclarationError`` the
Python API raises. A Python path that cannot be imported raises a ``DeclarationError`` naming the
dataset and the field. All datasets of a catalog go in one component (upstreams are looked up in
it). :func:`datasets_from_yaml` reads the same file into declarations, so ``[tool.conflux]
catalog`` (the CLI, the local stack) can follow a YAML catalog too.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from conflux.core.declarations import (BatchDataset, BatchFallback, Dataset, DeadLetterPolicy,
                                       EventDataset, validate_catalog)
from conflux.core.errors import DeclarationError

Duration = int | float | str
"""Seconds (a number) or an ISO 8601 duration such as ``PT30M`` or ``P1D``."""


class FallbackModel(dg.Model):
    """Batch source an event dataset can be rebuilt or reconciled from (``BatchFallback``)."""

    source_table: str = Field(description="schema.table in the operational Postgres")
    cron: str | None = Field(default=None, description="cadence of the fallback schedule "
                                                       "(default hourly, off until turned on)")


class DeadLetterModel(dg.Model):
    """Thresholds of an event dataset's ``dead_letters`` check (``DeadLetterPolicy``); a field
    left out keeps the Python default, ``null`` turns a threshold off."""

    window: Duration | None = Field(default=None, description="trailing window (default 1 h)")
    warn_rate: float | None = None
    error_rate: float | None = None
    warn_count: int | None = None
    error_count: int | None = None
    min_records: int | None = None
    every: Duration | None = Field(default=None, description="evaluation cadence (default 1 min)")


class DatasetModel(dg.Model):
    """One dataset, as the Python declarations have it. Fields of the other mode are refused."""

    name: str = Field(description="dataset name: the asset key and the registry subject")
    mode: Literal["event", "batch"] = Field(description="event (from Kafka) or batch")
    contract: str = Field(description="pydantic model of one row, as module:attribute")
    key: list[str] | str = Field(description="fields identifying a row")
    event_time: str | None = Field(default=None, description="date field picking the daily "
                                                            "partition; none: unpartitioned")
    owner: str | None = None
    description: str | None = None
    group: str | None = None
    freshness: Duration | None = Field(default=None, description="seconds or ISO 8601 duration")
    start: str | None = Field(default=None, description="first daily partition, YYYY-MM-DD")
    # event datasets
    topics: list[str] | str | None = None
    dlq_topic: str | None = None
    partitions: int | None = None
    max_records_per_run: int | None = None
    max_inflight_runs: int | None = None
    ingest: Literal["inline", "runs"] | None = None
    append_only: bool | None = None
    fallback: FallbackModel | None = None
    dlq: DeadLetterModel | None = None
    # batch datasets
    source_table: str | None = None
    upstream: list[str] | None = None
    compute: str | None = Field(default=None, description="compute function, module:attribute")
    schedule: str | None = Field(default=None, description="cron of the schedule")
    automation: bool | None = None
    backfill: Literal["single_run", "per_partition"] | None = None
    lineage: dict[str, list[str]] | None = None
    reads: dict[str, list[str]] | None = None
    stream: list[str] | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _date_as_text(cls, value):
        # YAML reads an unquoted 2024-01-01 as a date; the declaration takes either
        return value.isoformat() if isinstance(value, dt.date) else value


_EVENT_ONLY = ("topics", "dlq_topic", "partitions", "max_records_per_run", "max_inflight_runs",
               "ingest", "append_only", "fallback", "dlq")
_BATCH_ONLY = ("source_table", "upstream", "compute", "schedule", "automation", "backfill",
               "lineage", "reads", "stream")


def _fail(name: str, problem: str) -> DeclarationError:
    return DeclarationError(f"dataset {name!r}: {problem}")


def import_path(path: str, *, dataset: str, field: str):
    """The object a ``module:attribute`` (or ``module.attribute``) path names.

    Raises:
        DeclarationError: naming the dataset and the field when the path is malformed, the
            module does not import, or the attribute is missing.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr or not all(p.isidentifier() for p in
                                              (*module_name.split("."), *attr.split("."))):
        raise _fail(dataset, f"{field} {path!r} must be a Python path like "
                             f"'package.module:attribute'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised by the module itself
        raise _fail(dataset, f"{field} {path!r}: module {module_name!r} cannot be imported "
                             f"({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _fail(dataset, f"{field} {path!r}: module {module_name!r} has no attribute "
                                 f"{attr!r}")
        obj = getattr(obj, part)
    return obj


def _duration(value: Duration, *, dataset: str, field: str) -> dt.timedelta:
    if isinstance(value, bool):
        raise _fail(dataset, f"{field} {value!r} must be seconds or an ISO 8601 duration")
    if isinstance(value, (int, float)):
        return dt.timedelta(seconds=value)
    try:
        return TypeAdapter(dt.timedelta).validate_python(value.strip())
    except ValidationError:
        raise _fail(dataset, f"{field} {value!r} must be seconds or an ISO 8601 duration "
                             f"such as 'PT30M' or 'P1D'") from None


def _names(value: list[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def declaration(entry: DatasetModel) -> Dataset:
    """The ``EventDataset`` / ``BatchDataset`` one YAML entry declares (imports its Python
    paths; the catalog-wide checks are :func:`validate_catalog`'s)."""
    name = entry.name
    given = {f for f in entry.model_fields_set if getattr(entry, f) is not None}
    other = _BATCH_ONLY if entry.mode == "event" else _EVENT_ONLY
    wrong = [f for f in other if f in given]
    if wrong:
        raise _fail(name, f"{', '.join(wrong)} {'applies' if len(wrong) == 1 else 'apply'} "
                          f"to {'batch' if entry.mode == 'event' else 'event'} datasets only "
                          f"(this one has mode: {entry.mode})")
    kwargs: dict = {"name": name, "contract": import_path(entry.contract, dataset=name,
                                                          field="contract"),
                    "key": _names(entry.key)}
    for f in ("event_time", "owner", "description", "group", "start"):
        if f in given:
            kwargs[f] = getattr(entry, f)
    if entry.freshness is not None:
        kwargs["freshness"] = _duration(entry.freshness, dataset=name, field="freshness")
    if entry.mode == "event":
        kwargs["topics"] = _names(entry.topics)  # none: validate_catalog's error
        for f in ("dlq_topic", "partitions", "max_records_per_run", "max_inflight_runs",
                  "ingest", "append_only"):
            if getattr(entry, f) is not None:
                kwargs[f] = getattr(entry, f)
        if entry.fallback is not None:
            fb = entry.fallback
            kwargs["fallback"] = BatchFallback(source_table=fb.source_table,
                                               **({"cron": fb.cron} if fb.cron else {}))
        if entry.dlq is not None:
            kwargs["dlq"] = _dead_letter_policy(entry.dlq, dataset=name)
        return EventDataset(**kwargs)
    for f in ("source_table", "schedule", "automation", "backfill"):
        if getattr(entry, f) is not None:
            kwargs[f] = getattr(entry, f)
    if entry.compute is not None:
        compute = import_path(entry.compute, dataset=name, field="compute")
        if not callable(compute):
            raise _fail(name, f"compute {entry.compute!r} is a {type(compute).__name__}, "
                              f"not a function")
        kwargs["compute"] = compute
    for f in ("upstream", "stream"):
        if getattr(entry, f) is not None:
            kwargs[f] = tuple(getattr(entry, f))
    for f in ("lineage", "reads"):
        if getattr(entry, f) is not None:
            kwargs[f] = {k: tuple(v) for k, v in getattr(entry, f).items()}
    return BatchDataset(**kwargs)


def _dead_letter_policy(model: DeadLetterModel, *, dataset: str) -> DeadLetterPolicy:
    kwargs = {}
    for f in model.model_fields_set:
        value = getattr(model, f)
        if f in ("window", "every") and value is not None:
            value = _duration(value, dataset=dataset, field=f"dlq.{f}")
        elif f in ("window", "every", "min_records") and value is None:
            continue  # no "off" for these: keep the default
        kwargs[f] = value
    return DeadLetterPolicy(**kwargs)


SCAFFOLD_TEMPLATE = """\
type: {type_name}

# The catalog's datasets, each once, as event or batch, with one pydantic contract
# (docs/yaml-datasets.md). One ConfluxDatasets component per project.
attributes:
  datasets: []
  # - name: readings
  #   mode: event
  #   contract: my_pkg.contracts:Reading     # module:attribute of a pydantic model
  #   key: [reading_id]
  #   event_time: day                        # date field: daily partitions
  #   topics: [sensors.readings]
  # - name: daily_temperature
  #   mode: batch
  #   contract: my_pkg.contracts:DailyTemperature
  #   key: [day, device_id]
  #   event_time: day
  #   upstream: [readings]
  #   compute: my_pkg.joins:daily_temperature
  #   schedule: "15 * * * *"
"""


class ConfluxDatasetsScaffolder(dg.Scaffolder):
    """``dg scaffold defs conflux.dagster.component.ConfluxDatasets NAME``: a ``defs.yaml`` that
    loads as it is (no datasets yet) and shows the fields in comments."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            SCAFFOLD_TEMPLATE.format(type_name=request.type_name))


@dg.scaffold_with(ConfluxDatasetsScaffolder)
class ConfluxDatasets(dg.Component, dg.Resolvable, dg.Model):
    """Conflux datasets declared in YAML: event datasets (Kafka topics → daily partitioned lake
    tables, ingested by sensors) and batch datasets (table loads and joins, on schedules or
    declarative automation), compiled by ``conflux.build_definitions`` into assets, jobs,
    sensors, schedules, asset checks and the platform's resources.

    Python paths (``contract``, ``compute``) are ``module:attribute``; durations are seconds
    or ISO 8601 (``PT30M``). Put every dataset of the catalog in one component.
    """

    datasets: list[DatasetModel] = Field(description="the catalog's dataset declarations")

    def declarations(self) -> tuple[Dataset, ...]:
        """The declarations, validated together exactly as the Python API validates them.

        Raises:
            DeclarationError: an invalid declaration or a Python path that does not import.
        """
        datasets = tuple(declaration(entry) for entry in self.datasets)
        validate_catalog(datasets)
        return datasets

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from conflux.dagster.compile import build_definitions

        _check_only_one(context)
        return build_definitions(self.declarations())


def _check_only_one(context: dg.ComponentLoadContext) -> None:
    """A catalog is one component: upstreams, topics, the platform's resources and sensors are
    shared, so a second ``ConfluxDatasets`` in the project is refused with a clear error (instead
    of Dagster's "different resources with same key")."""
    tree = getattr(context, "component_tree", None)
    if tree is None or not getattr(context, "component_loc", None):
        return
    try:
        found = tree.get_all_components(of_type=ConfluxDatasets)
    except ImportError:  # a test tree (dg.build_defs_for_component) has no defs module
        return
    if len(found) > 1:
        raise DeclarationError(
            f"{context.path}: the project declares datasets in {len(found)} ConfluxDatasets "
            f"components; declare the catalog in one (upstreams, topics and the platform's "
            f"resources and sensors are shared)")


def datasets_from_yaml(path: str | Path) -> tuple[Dataset, ...]:
    """The declarations of a ``defs.yaml`` whose type is ``ConfluxDatasets`` (for
    ``[tool.conflux] catalog``, so the CLI and the local stack follow a YAML catalog).

    Examples:
        >>> DATASETS = datasets_from_yaml(Path(__file__).parent / "defs/datasets/defs.yaml")
    """
    import yaml

    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise DeclarationError(f"cannot read dataset declarations from {path}: {exc}") from exc
    for doc in documents:
        if isinstance(doc, Mapping) and str(doc.get("type", "")).endswith("ConfluxDatasets"):
            try:
                component = ConfluxDatasets.from_attributes_dict(
                    attributes=dict(doc.get("attributes") or {}))
            except ValidationError as exc:
                raise DeclarationError(f"{path}: {exc}") from None
            return component.declarations()
    raise DeclarationError(f"{path} declares no ConfluxDatasets component")
