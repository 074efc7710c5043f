"""Compute functions of the batch joins (pure pandas / pyarrow; no Dagster)."""
