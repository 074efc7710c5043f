"""Batch fallback on the real Postgres and Dagster instance: the reconciliation check reports
missing / extra / changed keys against the operational table, repairs the dataset to equal it,
and a second run finds nothing and writes nothing."""

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


def run_fallback(ds, instance, stack, lake, raise_on_error=True, **config):
    check, job, _ = build_fallback(ds)
    defs = dg.Definitions(asset_checks=[check], jobs=[job], resources={
        "postgres": PostgresResource(url=stack.settings.postgres_url), "lake": lake})
    return defs.resolve_job_def(job.name).execute_in_process(
        instance=instance, raise_on_error=raise_on_error,
        run_config={"ops": {f"{ds.name}__reconcile": {"config": config}}})


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

    first = run_fallback(ds, instance, stack, lake)
    assert first.success
    [evaluation] = first.get_asset_check_evaluations()
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.check_name == CHECK_NAME and not evaluation.passed
    assert (meta["conflux/missing"], meta["conflux/extra"], meta["conflux/changed"]) == (5, 2, 1)
    assert sorted(meta["conflux/examples"]["extra"]) == ["9000001", "9000002"]
    repaired = first.get_asset_materialization_events()
    assert repaired and meta["conflux/repaired_partitions"] == len(repaired)

    expected = source[list(ds.fields)].sort_values("o_orderkey").reset_index(drop=True)
    got = stored(lake, ds)
    assert list(got.o_orderkey) == list(expected.o_orderkey)
    assert got.o_totalprice.round(6).tolist() == expected.o_totalprice.round(6).tolist()

    second = run_fallback(ds, instance, stack, lake)
    [again] = second.get_asset_check_evaluations()
    assert again.passed and not second.get_asset_materialization_events()
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
                          repair=False)
    [evaluation] = report.get_asset_check_evaluations()
    in_range = int((source.o_orderdate == one_day).sum())
    assert evaluation.metadata["conflux/missing"].value == in_range
    assert lake.partitions(ds.name) == []


def test_a_bad_date_fails_the_run_with_a_clear_message(fallback_ds, instance, stack, lake):
    ds, _ = fallback_ds
    result = run_fallback(ds, instance, stack, lake, raise_on_error=False, start="yesterday")
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert "'yesterday' is not a date" in error.message + str(error.cause and error.cause.message)
