"""Rank scored pairs per query: rank 1 = highest score, ties broken by doc_id (ascending).

`Ranker` takes any table holding *complete* queries (one query, or many), so it is
correct under map_groups(query_id), which gathers each query's rows from every input
file and block first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import InputError
from jobs.schema import (
    DOC_ID,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    MODEL,
    QUERY_ID,
    RANK,
    SCORE,
)

MAX_LISTED = 10


def _starts(sorted_keys: list[pa.ChunkedArray]) -> np.ndarray:
    """Boolean per row: True where the key tuple differs from the previous row's."""
    n = len(sorted_keys[0])
    start = np.zeros(n, dtype=bool)
    if n:
        start[0] = True
    for key in sorted_keys:
        arr = key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key
        if n > 1:
            start[1:] |= pc.not_equal(arr.slice(1), arr.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return start


@dataclass(frozen=True)
class Ranker:
    """Callable for map_groups(query_id, batch_format="pyarrow")."""

    model: str
    top_k: int | None = None
    on_duplicate: str = "error"
    extra_columns: tuple[str, ...] = ()

    def __call__(self, table: pa.Table) -> pa.Table:
        table = self._dedupe(table)
        order = pc.sort_indices(
            table, [(QUERY_ID, "ascending"), (SCORE, "descending"), (DOC_ID, "ascending")]
        )
        table = table.take(order)
        start = _starts([table[QUERY_ID]])
        group_start = np.maximum.accumulate(np.where(start, np.arange(len(table)), 0))
        rank = (np.arange(len(table)) - group_start + 1).astype(np.int32)
        table = table.append_column(RANK, pa.array(rank))
        if self.top_k is not None:
            table = table.filter(pa.array(rank <= self.top_k))
        return self._output(table)

    def _dedupe(self, table: pa.Table) -> pa.Table:
        """Drop repeated (query_id, doc_id), keeping the best-scored copy; or raise."""
        order = pc.sort_indices(
            table, [(QUERY_ID, "ascending"), (DOC_ID, "ascending"), (SCORE, "descending")]
        )
        by_pair = table.take(order)
        first = _starts([by_pair[QUERY_ID], by_pair[DOC_ID]])
        if first.all():
            return table
        if self.on_duplicate == "dedupe":
            return by_pair.filter(pa.array(first))
        dups = by_pair.filter(pa.array(~first)).select([QUERY_ID, DOC_ID])
        listed = ", ".join(f"({r[QUERY_ID]!r}, {r[DOC_ID]!r})" for r in dups.slice(0, MAX_LISTED).to_pylist())
        raise InputError(
            f"found {len(dups)} extra cop(ies) of (query_id, doc_id) pairs in the input, e.g. {listed}. "
            "Fix the input, or set input.on_duplicate: dedupe to keep the best-scored copy."
        )

    def _output(self, table: pa.Table) -> pa.Table:
        cols = {QUERY_ID: table[QUERY_ID], DOC_ID: table[DOC_ID], SCORE: table[SCORE], RANK: table[RANK]}
        for name in (FIRST_STAGE_SCORE, FIRST_STAGE_RANK):
            if name in table.column_names:
                cols[name] = table[name]
        cols[MODEL] = pa.array([self.model] * len(table), pa.string())
        for name in self.extra_columns:
            cols[name] = table[name]
        return pa.table(cols)


def rank_queries(table: pa.Table, ranker: Ranker) -> pa.Table:
    """map_groups entry point (Ray names the stage after this function)."""
    return ranker(table)
