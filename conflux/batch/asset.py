"""Batch path: assets loaded from the operational Postgres, or computed by joins over upstream
datasets, reading only the partitions they need — by a ``compute(inputs)`` function Conflux calls,
or by a Dagster asset whose inputs and output the lake IO manager loads and stores."""

import inspect

import dagster as dg
import pyarrow as pa

from conflux.contracts.lineage import arrow_schema, contract_schema
from conflux.observe import openlineage
from conflux.batch import ops_load
from conflux.core.declarations import BatchDataset, Dataset
from conflux.contracts.metadata import column_lineage, materialization_metadata
from conflux.io.lake import LakeResource
from conflux.io.postgres import PostgresResource
from conflux.io.registry import SchemaRegistryResource


def contract_ref(ds: Dataset, registry: SchemaRegistryResource) -> str | None:
    """subject@version of the contract this code writes with, when registered."""
    try:
        found = registry.client.lookup(ds.subject, contract_schema(ds.contract))
    except Exception:  # registry not initialised yet: the metadata says "unregistered"
        return None
    return found.ref if found else None


def read_inputs(ds: BatchDataset, catalog: dict[str, Dataset], lake: LakeResource,
                partitions: list[str] | None) -> dict[str, pa.Table]:
    """Upstream data for the run, as Arrow tables of the columns it reads (lazy scans for the
    upstreams it streams): the run's partitions of partitioned upstreams, all of the rest
    (empty, typed tables when nothing is stored)."""
    inputs = {}
    for up in ds.upstream:
        upstream = catalog[up]
        wanted = partitions if upstream.partitioned and partitions is not None else None
        columns = list(ds.reads.get(up, upstream.fields))
        if up in ds.stream:
            table = lake.scan(up, wanted, columns)
        else:
            table = lake.read_partitions(up, wanted, columns=columns)
        if table is None:
            schema = arrow_schema(upstream.contract)
            table = pa.schema([schema.field(c) for c in columns]).empty_table()
        inputs[up] = table
    return inputs


def backfill_policy(ds: BatchDataset) -> dg.BackfillPolicy | None:
    """The declared backfill policy (partitioned datasets only)."""
    if not ds.partitioned:
        return None
    return (dg.BackfillPolicy.single_run() if ds.backfill == "single_run"
            else dg.BackfillPolicy.multi_run(1))


def build_asset_compute(ds: BatchDataset, spec: dg.AssetSpec) -> dg.AssetsDefinition:
    """The asset of a batch dataset whose ``compute`` is a Dagster asset (``@dg.asset``): its
    function, inputs (with their metadata and partition mappings), retry policy and op tags, under
    the dataset's spec — key, partitions, metadata, automation, backfill policy. The lake IO
    manager loads its inputs and stores the rows it returns under the contract.

    Examples:
        >>> @dg.asset
        ... def hot_devices(daily_temperature: pd.DataFrame) -> pd.DataFrame:
        ...     return daily_temperature[daily_temperature.max_c > 30]
        >>> HOT = BatchDataset(name="hot_devices", contract=HotDevice, key=("day", "device_id"),
        ...                    event_time="day", compute=hot_devices)
    """
    user: dg.AssetsDefinition = ds.compute
    fn = inspect.unwrap(user.op)  # the decorated function (functools.update_wrapper)
    ins, deps = {}, []
    for name, key in user.keys_by_input_name.items():
        given = user.op.ins[name]
        mapping = user.get_partition_mapping(key)
        if given.dagster_type.is_nothing:  # a deps= dependency
            deps.append(dg.AssetDep(key, partition_mapping=mapping))
        else:  # a parameter
            ins[name] = dg.AssetIn(key=key, metadata=given.metadata, partition_mapping=mapping)
    params = set(inspect.signature(fn).parameters)
    return dg.asset(
        key=spec.key, ins=ins, deps=deps, description=spec.description,
        group_name=spec.group_name, owners=list(spec.owners), kinds=set(spec.kinds),
        tags={k: v for k, v in spec.tags.items() if not k.startswith("dagster/kind/")},
        metadata=dict(spec.metadata), partitions_def=spec.partitions_def,
        code_version=spec.code_version, automation_condition=spec.automation_condition,
        freshness_policy=spec.freshness_policy, backfill_policy=backfill_policy(ds),
        op_tags=user.op.tags or None, retry_policy=user.op.retry_policy,
        required_resource_keys=set(user.op.required_resource_keys) - params or None,
    )(fn)


def build_batch_asset(ds: BatchDataset, spec: dg.AssetSpec,
                      catalog: dict[str, Dataset]) -> dg.AssetsDefinition:
    """The executable asset of a batch dataset (a table load or a join), from its spec. It
    writes the lake itself and returns ``MaterializeResult`` (nothing for an IO manager to
    store); downstream assets read it through the lake IO manager."""
    lineage = column_lineage(ds, catalog)

    def _compute(context: dg.AssetExecutionContext, postgres: PostgresResource,
                 lake: LakeResource, registry: SchemaRegistryResource) -> dg.MaterializeResult:
        extra = {} if lineage is None else {"dagster/column_lineage": lineage}
        ref = contract_ref(ds, registry)
        if ds.source_table:
            previous = context.instance.get_latest_materialization_event(dg.AssetKey(ds.name))
            meta = previous.asset_materialization.metadata if previous else {}
            watermark = meta.get("conflux/watermark")
            since_full = meta.get("conflux/loads_since_full")
            loaded = ops_load.load(ds, postgres=postgres, lake=lake,
                                   previous_watermark=watermark.value if watermark else None,
                                   loads_since_full=since_full.value if since_full else 0)
            context.log.info(f"{ds.name}: {loaded.mode} load of {ds.source_table}: "
                             f"{loaded.rows_read} row(s) read ({loaded.reason})")
            return dg.MaterializeResult(metadata={
                **materialization_metadata(
                    ds, rows=lake.row_count(ds.name), contract_version=ref,
                    source_table=ds.source_table, load_mode=loaded.mode,
                    load_reason=loaded.reason, rows_read=loaded.rows_read,
                    rows_written=loaded.rows_written, watermark=loaded.watermark or "",
                    loads_since_full=0 if loaded.mode == "snapshot" else
                    (since_full.value if since_full else 0) + 1), **extra})
        partitions = (list(context.partition_keys) if ds.partitioned else None)
        if partitions:
            context.log.info(f"{ds.name}: computing {len(partitions)} partition(s) "
                             f"{partitions[0]} .. {partitions[-1]} in one run")
        inputs = read_inputs(ds, catalog, lake, partitions)
        projection = getattr(ds.compute, "projection", None)
        if projection is not None:  # folds only what is new, commits with its checkpoint
            folded = projection.materialize(inputs, lake=lake, dataset=ds.name)
            context.log.info(folded.summary(ds.name))
            return dg.MaterializeResult(metadata={
                **materialization_metadata(ds, rows=folded.rows, contract_version=ref,
                                           upstream=", ".join(ds.upstream),
                                           partitions_computed=0, **folded.metadata()),
                **extra})
        out = ds.compute(inputs)
        meta = materialization_metadata(ds, rows=len(out), contract_version=ref,
                                        upstream=", ".join(ds.upstream),
                                        partitions_computed=len(partitions or []))
        if ds.partitioned:
            key_col = out[ds.event_time].astype(str)
            groups = dict(tuple(out.groupby(key_col))) if len(out) else {}
            ranged = len(partitions) > 1
            if ranged:  # the run's total, not any one partition's
                meta["conflux/run_rows"] = meta.pop("dagster/row_count")
            parts = {p: groups.get(p, out.iloc[0:0]) for p in partitions}
            commit = lake.write_many(ds.name, parts)  # one Delta commit for the run's partitions
            if ranged:  # each partition's materialization: its own rows
                for p, part in parts.items():
                    context.add_asset_metadata({"dagster/row_count": len(part)}, partition_key=p)
            context.log.info(f"{ds.name}: wrote {len(parts)} partition(s) in Delta version "
                             f"{commit.version}")
        else:
            commit = lake.write(ds.name, out)
        meta.update(commit.metadata())
        return dg.MaterializeResult(metadata={**meta, **extra})

    @dg.multi_asset(name=ds.name, specs=[spec], backfill_policy=backfill_policy(ds))
    def _asset(context: dg.AssetExecutionContext, postgres: PostgresResource, lake: LakeResource,
               registry: SchemaRegistryResource) -> dg.MaterializeResult:
        # OpenLineage START, then COMPLETE or FAIL, around the work (nothing when lineage is off)
        with openlineage.lineage_run(
                lambda: openlineage.batch_io(ds, catalog, lake_path=lake.path,
                                             postgres_url=postgres.url),
                parent=openlineage.dagster_parent(context)) as run:
            result = _compute(context, postgres, lake, registry)
            meta = result.metadata or {}
            rows = ("conflux/rows_written", "dagster/row_count", "conflux/run_rows")
            run.add_rows(openlineage.DATA, next((meta[k] for k in rows if k in meta), 0))
        return result

    return _asset
