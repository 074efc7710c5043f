"""``conflux lake migrate``: convert a lake's pre-Delta datasets into Delta tables.

Per old-format dataset (see ``conflux.io.lake_legacy``): every partition is read merged (base
file + pending delta files, by the dataset's merge rule) to check it can be; the old folder is
moved aside to ``<lake>/_legacy/<dataset>/`` (a rename locally; on S3 a copy, then a delete);
each partition is written into the dataset's new Delta table with ``LakeResource.write``
(checkpointed partitions with ``rewrite_checkpointed``, so their checkpoint survives); then the
row count of each partition in the table is checked against the old format's. Only then is the
backup marked done (``_legacy/<dataset>/.migrated``); ``_legacy/`` is never deleted.

Idempotent and resumable: a dataset whose backup is not marked done (an interrupted run) is
read again from its backup and every partition rewritten (a write replaces its partition); a
second run finds nothing to do. Run it with the pipelines writing the lake stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from conflux.core.errors import ConfluxError, LakeError
from conflux.io.lake import LakeResource
from conflux.io.lake_legacy import UNPARTITIONED, LegacyLake, without_checkpoint_key

BACKUP = "_legacy"
DONE = ".migrated"  # in a backup folder: its dataset was migrated and checked


@dataclass
class DatasetMigration:
    """One dataset: rows per partition (``_all`` when unpartitioned), the partitions that kept
    a checkpoint, where its old files are, and whether an interrupted run was resumed."""

    dataset: str
    partitions: dict[str, int] = field(default_factory=dict)
    checkpointed: list[str] = field(default_factory=list)
    backup: str = ""
    resumed: bool = False

    @property
    def rows(self) -> int:
        return sum(self.partitions.values())

    def line(self) -> str:
        text = (f"{self.dataset}: {_count(len(self.partitions), 'partition')}, "
                f"{_count(self.rows, 'row')}")
        if self.checkpointed:
            text += f", checkpoint kept for {', '.join(self.checkpointed)}"
        return text + (" (resumed an interrupted migration)" if self.resumed else "")


@dataclass
class MigrationReport:
    lake: str
    dry_run: bool = False
    datasets: list[DatasetMigration] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # named, and already Delta tables

    @property
    def backup(self) -> str:
        return f"{self.lake}/{BACKUP}"

    def as_dict(self) -> dict:
        return {"lake": self.lake, "dry_run": self.dry_run, "backup": self.backup,
                "datasets": [{**asdict(d), "rows": d.rows} for d in self.datasets],
                "already_migrated": self.already}

    def text(self) -> str:
        if not self.datasets:
            return f"nothing to migrate in lake {self.lake}: no dataset is in the pre-Delta format"
        parts = sum(len(d.partitions) for d in self.datasets)
        rows = sum(d.rows for d in self.datasets)
        verb = "would migrate" if self.dry_run else "migrated"
        lines = [f"{verb} {_count(len(self.datasets), 'dataset')} of lake {self.lake} "
                 f"({_count(parts, 'partition')}, {_count(rows, 'row')}):"]
        lines += [f"  {d.line()}" for d in self.datasets]
        lines.append("dry run: nothing changed" if self.dry_run else
                     f"the old files are kept in {self.backup}/: delete _legacy/ once you have "
                     "checked the migrated datasets")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def migrate_lake(lake: LakeResource, *, datasets: list[str] | None = None, dry_run: bool = False,
                 progress: Callable[[str], None] | None = None) -> MigrationReport:
    """Migrate the lake's old-format datasets (only ``datasets`` when given) to Delta tables.

    ``progress`` gets one line per partition. A failure raises ``LakeError`` naming the
    dataset (its old files stay in ``_legacy/<dataset>``; a new run resumes it)."""
    old = LegacyLake.open(lake.path)
    report = MigrationReport(lake=old.url, dry_run=dry_run)
    say = progress or (lambda line: None)
    for name in _plan(old, lake, datasets, report):
        report.datasets.append(_migrate(old, lake, name, dry_run, say))
    return report


def _backups(old: LegacyLake) -> list[str]:
    """Backups of datasets whose migration has not finished."""
    return [n for n in old.folders(BACKUP) if not old.exists(old.join(BACKUP, n, DONE))]


def _plan(old: LegacyLake, lake: LakeResource, names: list[str] | None,
          report: MigrationReport) -> list[str]:
    pending = sorted(set(old.datasets()) | set(_backups(old)))
    if names is None:
        return pending
    chosen = []
    for name in dict.fromkeys(names):
        if name in pending:
            chosen.append(name)
        elif old.exists(old.join(BACKUP, name, DONE)) or lake.exists_table(name):
            report.already.append(name)
        else:
            raise LakeError(f"lake {old.url}: dataset {name}: not found in the pre-Delta format "
                            f"(its old-format datasets: {', '.join(pending) or 'none'})")
    return chosen


def _migrate(old: LegacyLake, lake: LakeResource, name: str, dry_run: bool,
             say: Callable[[str], None]) -> DatasetMigration:
    backup = f"{BACKUP}/{name}"
    result = DatasetMigration(name, backup=f"{old.url}/{backup}")
    step = "reading the old format"
    partition = None
    try:
        source = _source(old, name, backup, dry_run, result)
        parts = old.partitions(source)
        if UNPARTITIONED in parts and len(parts) > 1:
            raise LakeError(f"both {UNPARTITIONED}.parquet and daily partitions "
                            f"({', '.join(p for p in parts if p != UNPARTITIONED)})")
        for partition in parts:  # everything readable before anything moves
            table = old.read_partition(source, partition)
            result.partitions[partition] = len(table) if table is not None else 0
        partition = None
        if dry_run:
            for p, rows in result.partitions.items():
                say(f"{name}/{p}: {_count(rows, 'row')} (dry run)")
            return result
        if source == name:
            step = f"moving it to {result.backup}"
            old.move(old.join(name), old.join(backup))
        say(f"{name}: {'resuming from' if result.resumed else 'old files moved to'} "
            f"{result.backup}; writing "
            f"{_count(len(parts), 'partition')}")
        step = "writing the Delta table"
        for partition in parts:
            rows = _write_partition(old, lake, name, backup, partition, result)
            say(f"{name}/{partition}: {_count(rows, 'row')}"
                + (" + checkpoint" if partition in result.checkpointed else ""))
        step = "checking the Delta table"
        for partition in parts:
            _verify(lake, name, partition, result)
        partition = None
        old.write_text(old.join(backup, DONE), json.dumps(asdict(result), indent=2))
        return result
    except Exception as exc:
        text = exc.args[0] if isinstance(exc, ConfluxError) and exc.args else str(exc)
        where = f" partition {partition}," if partition else ""
        kept = (f"; its old files are in {result.backup} (run `conflux lake migrate` again to "
                "resume)" if _moved(old, backup) else "")
        raise LakeError(f"lake {old.url}: dataset {name}:{where} {step} failed: "
                        f"{text.strip().splitlines()[0] if text.strip() else type(exc).__name__}"
                        f"{kept}") from None


def _moved(old: LegacyLake, backup: str) -> bool:
    try:
        return old.moved(old.join(backup))
    except OSError:
        return False


def _source(old: LegacyLake, name: str, backup: str, dry_run: bool,
            result: DatasetMigration) -> str:
    """Where to read the old format from: the dataset folder, or (an interrupted run) its
    backup; repairs an interrupted move on S3."""
    target = old.join(backup)
    if not old.exists(target):
        return name
    if old.exists(old.join(backup, DONE)):
        raise LakeError(f"{result.backup} holds the backup of an earlier migration, and the "
                        "dataset is in the old format again: move that backup away first")
    if not old.moved(target):  # S3: the copy was interrupted; the dataset folder is whole
        if not dry_run:
            old.delete_dir(target)
        return name
    if old.is_legacy(name):
        if not old.remote:
            raise LakeError(f"both the dataset folder and {result.backup} hold the old format: "
                            "keep one")
        if not dry_run:  # S3: the delete after the copy was interrupted
            old.delete_dir(old.join(name))
    result.resumed = True
    return backup


def _write_partition(old: LegacyLake, lake: LakeResource, name: str, backup: str,
                     partition: str, result: DatasetMigration) -> int:
    table = old.read_partition(backup, partition)
    if table is None:  # its files vanished since the first read
        raise LakeError("partition files changed during the migration")
    result.partitions[partition] = len(table)
    table = without_checkpoint_key(table)
    target = None if partition == UNPARTITIONED else partition
    checkpoint = old.checkpoint(backup, partition)
    if checkpoint is None:
        lake.write(name, table, partition=target)
    else:
        _, tables = checkpoint
        lake.rewrite_checkpointed(name, lambda content, current: (table, tables),
                                  partition=target)
        if partition not in result.checkpointed:
            result.checkpointed.append(partition)
    return len(table)


def _verify(lake: LakeResource, name: str, partition: str, result: DatasetMigration) -> None:
    target = None if partition == UNPARTITIONED else partition
    want = result.partitions[partition]
    got = lake.row_count(name, target)
    if got != want:
        raise LakeError(f"the Delta table holds {got} rows, the old format {want}")
    if partition in result.checkpointed:
        _, ident, tables = lake.read_checkpointed(name, target)
        if ident is None:
            raise LakeError("the checkpoint was not kept")
