"""Batch fallback on the real Postgres and Dagster instance: the read-only reconciliation check
reports missing / extra / changed keys against the operational table and writes nothing; the
reconcile job repairs the dataset to equal it; then the check passes and a second repair finds
nothing and writes nothing."""

import json

import dagster as dg
import pandas as pd

from pipelines.demo.tpch import TpchGenerator
from conflux.event.decode import ContractResolver
from conflux.batch.fallback import CHECK_NAME, build_fallback
from conflux.event.ingest import apply_records
from conflux.io.kafka import Record
from conflux.io.postgres import PostgresResource


def as_records(df: pd.DataFrame, topic: str) -> list[Record]:
    from pipelines.demo.producer import json_rows

    return [Record(topic, 0, i, 1_000 + i, str(r["o_orderkey"]).encode(), json.dumps(r).encode(), ())
            for i, r in enumerate(json_rows(df))]


def _defs(ds, stack, lake):
    check, job, _ = build_fallback(ds)
    defs = dg.Definitions(asset_checks=[check], jobs=[job], resources={
        "postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake})
    return defs, check, job


def run_fallback(ds, instance, stack, lake, raise_on_error=True, **config):
    """The reconcile job (repairs unless ``dry_run``)."""
    defs, _, job = _defs(ds, stack, lake)
    return defs.resolve_job_def(job.name).execute_in_process(
        instance=instance, raise_on_error=raise_on_error,
        run_config={"ops": {f"{ds.name}__reconcile": {"config": config}}})


def run_check(ds, instance, stack, lake, **config):
    """Execute the ``matches_batch_source`` check alone (the UI's *Execute*)."""
    defs, check, _ = _defs(ds, stack, lake)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={dg.AssetCheckKey(dg.AssetKey(ds.name), CHECK_NAME)})
    return job.execute_in_process(
        instance=instance, run_config={"ops": {f"{ds.name}__matches_batch_source": {
            "config": config}}})


def stored(lake, ds) -> pd.DataFrame:
    frames = [lake.read(ds.name, p) for p in lake.partitions(ds.name)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ds.fields))
    return df[list(ds.fields)].sort_values("o_orderkey").reset_index(drop=True)


def test_reconciliation_reports_and_repairs_then_finds_nothing(fallback_ds, instance, stack, lake):
    ds, source = fallback_ds
    streamed = source.iloc[5:].copy()                     # 5 orders never arrived
    streamed.loc[streamed.index[0], "o_totalprice"] += 1.5  # one lost update
    extra = TpchGenerator(0.001, seed=12).orders().head(2).assign(o_orderkey=[9_000_001, 9_000_002])
    records = as_records(pd.concat([streamed, extra]), ds.topics[0])
    apply_records(ds, records, kafka=None, lake=lake, resolver=ContractResolver(ds.subject, None, []),
                  origin="test", sources=[])

    before = stored(lake, ds)
    checked = run_check(ds, instance, stack, lake)
    [evaluation] = checked.get_asset_check_evaluations()
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.check_name == CHECK_NAME and not evaluation.passed
    assert (meta["conflux/missing"], meta["conflux/extra"], meta["conflux/changed"]) == (5, 2, 1)
    assert sorted(meta["conflux/examples"]["extra"]) == ["9000001", "9000002"]
    assert meta["conflux/repaired"] is False and meta["conflux/repaired_partitions"] == 0
    assert not checked.get_asset_materialization_events()
    pd.testing.assert_frame_equal(stored(lake, ds), before)  # the check wrote nothing

    first = run_fallback(ds, instance, stack, lake)
    assert first.success
    repaired = first.get_asset_materialization_events()
    assert repaired
    counts = repaired[0].event_specific_data.materialization.metadata
    assert [counts[f"conflux/{k}_repaired"].value for k in ("missing", "extra", "changed")] \
        == [5, 2, 1]

    expected = source[list(ds.fields)].sort_values("o_orderkey").reset_index(drop=True)
    got = stored(lake, ds)
    assert list(got.o_orderkey) == list(expected.o_orderkey)
    assert got.o_totalprice.round(6).tolist() == expected.o_totalprice.round(6).tolist()

    second = run_fallback(ds, instance, stack, lake)
    assert second.success and not second.get_asset_materialization_events()
    [again] = run_check(ds, instance, stack, lake).get_asset_check_evaluations()
    assert again.passed
    # the check's latest result is what the UI shows for the asset
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(ds.name), CHECK_NAME)])
    assert latest


def test_a_report_only_run_changes_nothing_and_a_date_range_limits_the_comparison(
        fallback_ds, instance, stack, lake):
    ds, source = fallback_ds
    days = sorted(source.o_orderdate.unique())
    one_day = days[len(days) // 2]
    report = run_fallback(ds, instance, stack, lake, start=str(one_day), end=str(one_day),
                          dry_run=True)
    assert report.success and not report.get_asset_materialization_events()
    [evaluation] = run_check(ds, instance, stack, lake, start=str(one_day),
                             end=str(one_day)).get_asset_check_evaluations()
    in_range = int((source.o_orderdate == one_day).sum())
    assert evaluation.metadata["conflux/missing"].value == in_range
    assert lake.partitions(ds.name) == []


def test_a_bad_date_fails_the_run_with_a_clear_message(fallback_ds, instance, stack, lake):
    ds, _ = fallback_ds
    result = run_fallback(ds, instance, stack, lake, raise_on_error=False, start="yesterday")
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert "'yesterday' is not a date" in error.message + str(error.cause and error.cause.message)
