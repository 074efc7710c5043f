"""Keeping one row per key among a stored table and incoming writes, in Arrow: the rule the
lake's upserts apply (``LakeResource.upsert_many`` reduces a micro-batch with it before its
MERGE; the batch fallback repairs with it) and the one the pre-Delta lake merged on read with."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _align(incoming: pa.Table, current: pa.Table) -> pa.Table:
    """Cast ``incoming`` to the stored schema where the columns match (e.g. int → double)."""
    if incoming.schema.names == current.schema.names and incoming.schema != current.schema:
        try:
            return incoming.cast(current.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # not castable as a whole: left to merge_writes' permissive concat, which unifies
            # what it can (null columns, widening) and raises ArrowTypeError on the rest
            return incoming
    return incoming


def merge_writes(current: pa.Table | None, writes: list[pa.Table], key: list[str], *,
                 order_by: list[str] | None = None,
                 keep_existing: bool = False) -> tuple[pa.Table, int]:
    """Several writes merged by key, in write order (the pre-Delta lake's base file and its
    delta files); returns the result sorted by key and how many rows of the *last* write were
    kept.

    Per key the row that sorts last by ``order_by`` wins (the latest write when None), the
    stored row winning a tie; with ``keep_existing`` the earliest write holding a key wins and
    ``order_by`` only ranks the rows of one write."""
    stored = current is not None and len(current) > 0
    parts = [current, *(_align(w, current) for w in writes)] if stored else list(writes)
    ranks = ([0] if stored else []) + [i + 1 if keep_existing else 1 for i in range(len(writes))]
    tagged = [t.append_column("__src", pa.array(np.full(len(t), r, dtype=np.int32)))
              for t, r in zip(parts, ranks)]
    table = pa.concat_tables(tagged, promote_options="permissive") if len(tagged) > 1 else tagged[0]
    if keep_existing:
        sort_keys = [("__src", "descending")] + [(c, "descending") for c in (order_by or [])]
    elif order_by:
        sort_keys = [(c, "ascending") for c in order_by] + [("__src", "descending")]
    else:
        sort_keys = [("__src", "ascending")]
    order = pc.sort_indices(table, sort_keys=sort_keys) if len(table) > 1 else pa.array([0])
    ranked = table.take(order).append_column("__rank", pa.array(np.arange(len(table))))
    winners = ranked.group_by(key, use_threads=False).aggregate([("__rank", "max")])
    kept = ranked.filter(pc.is_in(ranked["__rank"], winners["__rank_max"]))
    written = int(pc.sum(pc.equal(kept["__src"], ranks[-1])).as_py() or 0)
    kept = kept.drop_columns(["__src", "__rank"])
    kept = kept.take(pc.sort_indices(kept, sort_keys=[(k, "ascending") for k in key]))
    return kept, written


def merge_by_key(current: pa.Table | None, incoming: pa.Table, key: list[str], *,
                 order_by: list[str] | None = None, keep_existing: bool = False) -> tuple[pa.Table, int]:
    """Upsert ``incoming`` into ``current`` in memory; returns (result sorted by key, incoming
    rows kept). Per key the row that sorts last by ``order_by`` wins (the incoming row when
    None); with ``keep_existing`` the stored row always wins and ``order_by`` (first = oldest)
    picks among the incoming rows of a new key. On a tie the stored row wins."""
    return merge_writes(current, [incoming], key, order_by=order_by, keep_existing=keep_existing)
