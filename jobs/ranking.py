"""Rank scored pairs per query: rank 1 = highest score, ties broken by doc_id (ascending).

Every ranker here takes any table holding *complete* queries (one query, or many), so
it is correct under map_groups(query_id), which gathers each query's rows from every
input file and block first.

Cascades: `StageRanker` ranks stage i among the rows that stage scored (and, for stage
1, resolves duplicates); `CascadeRanker` makes the final order: the rows the last stage
scored by its score, then the rows only the stage before scored by theirs, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import InputError
from jobs.schema import (
    DOC,
    DOC_ID,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    INSTRUCTION,
    MODEL,
    QUERY,
    QUERY_ID,
    RANK,
    SCORE,
    stage_rank,
    stage_score,
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


def _ranked(table: pa.Table, keys: list[tuple[str, str]]) -> tuple[pa.Table, np.ndarray]:
    """`table` sorted by query_id then `keys` (nulls last), and each row's 1-based position in its query."""
    keys = [(QUERY_ID, "ascending"), *keys]
    table = table.take(pc.sort_indices(table, [(name, order, "at_end") for name, order in keys]))
    start = _starts([table[QUERY_ID]])
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(table)), 0))
    return table, (np.arange(len(table)) - group_start + 1).astype(np.int32)


def dedupe(table: pa.Table, score: str, on_duplicate: str) -> pa.Table:
    """Drop repeated (query_id, doc_id), keeping the best-scored copy; or raise listing them."""
    by_pair = table.take(pc.sort_indices(
        table, [(QUERY_ID, "ascending"), (DOC_ID, "ascending"), (score, "descending")]))
    first = _starts([by_pair[QUERY_ID], by_pair[DOC_ID]])
    if first.all():
        return table
    if on_duplicate == "dedupe":
        return by_pair.filter(pa.array(first))
    dups = by_pair.filter(pa.array(~first)).select([QUERY_ID, DOC_ID])
    listed = ", ".join(f"({r[QUERY_ID]!r}, {r[DOC_ID]!r})" for r in dups.slice(0, MAX_LISTED).to_pylist())
    raise InputError(
        f"found {len(dups)} extra cop(ies) of (query_id, doc_id) pairs in the input, e.g. {listed}. "
        "Fix the input, or set input.on_duplicate: dedupe to keep the best-scored copy."
    )


def _output(table: pa.Table, score: pa.ChunkedArray | pa.Array, model: pa.Array,
            stage_columns: list[str], extra_columns: tuple[str, ...]) -> pa.Table:
    cols = {QUERY_ID: table[QUERY_ID], DOC_ID: table[DOC_ID], SCORE: score, RANK: table[RANK]}
    for name in (FIRST_STAGE_SCORE, FIRST_STAGE_RANK):
        if name in table.column_names:
            cols[name] = table[name]
    cols[MODEL] = model
    cols |= {name: table[name] for name in stage_columns}
    cols |= {name: table[name] for name in extra_columns}
    return pa.table(cols)


@dataclass(frozen=True)
class Ranker:
    """Callable for map_groups(query_id, batch_format="pyarrow"): a single-stage run."""

    model: str
    top_k: int | None = None
    on_duplicate: str = "error"
    extra_columns: tuple[str, ...] = ()

    def __call__(self, table: pa.Table) -> pa.Table:
        table = dedupe(table, SCORE, self.on_duplicate)
        table, rank = _ranked(table, [(SCORE, "descending"), (DOC_ID, "ascending")])
        table = table.append_column(RANK, pa.array(rank))
        if self.top_k is not None:
            table = table.filter(pa.array(rank <= self.top_k))
        return _output(table, table[SCORE], pa.array([self.model] * len(table), pa.string()), [],
                       self.extra_columns)


def with_stage_rank(table: pa.Table, stage: int) -> pa.Table:
    """Add stage<i>_rank: the rank among the rows stage i scored (null where it did not)."""
    score = stage_score(stage)
    table, rank = _ranked(table, [(score, "descending"), (DOC_ID, "ascending")])
    return table.append_column(stage_rank(stage), pa.array(rank, mask=pc.is_null(table[score]).to_numpy(
        zero_copy_only=False)))


def advancing(table: pa.Table, stage: int, top_n: int) -> pa.ChunkedArray:
    """Per row, whether the next cascade stage scores it: stage `stage` ranked it in its top_n."""
    return pc.fill_null(pc.less_equal(table[stage_rank(stage)], top_n), False)


@dataclass(frozen=True)
class StageRanker:
    """map_groups callable between cascade stages: rank stage `stage`; the texts stay only
    on the rows the next stage scores (its `top_n`)."""

    stage: int
    top_n: int
    on_duplicate: str = "error"

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.stage == 1:
            table = dedupe(table, stage_score(1), self.on_duplicate)
        table = with_stage_rank(table, self.stage)
        going_on = advancing(table, self.stage, self.top_n)
        for name in (QUERY, DOC, INSTRUCTION):
            if name in table.column_names:
                i = table.column_names.index(name)
                table = table.set_column(i, name, pc.if_else(going_on, table[name], pa.scalar(None, table[name].type)))
        return table


@dataclass(frozen=True)
class CascadeRanker:
    """map_groups callable after a cascade's last stage: the final rank over every pair.

    `score` is the score of the deepest stage that scored the pair and `model` that
    stage's model; each stage's own score and rank are kept as stage<i>_score/_rank.
    """

    models: tuple[str, ...]
    top_k: int | None = None
    extra_columns: tuple[str, ...] = ()

    def __call__(self, table: pa.Table) -> pa.Table:
        stages = len(self.models)
        table = with_stage_rank(table, stages)
        scored = [pc.is_valid(table[stage_score(i)]).to_numpy(zero_copy_only=False) for i in range(1, stages + 1)]
        depth = np.sum(scored, axis=0).astype(np.int8)
        final = np.zeros(len(table), dtype=np.float32)
        for i in range(1, stages + 1):
            final = np.where(depth == i, table[stage_score(i)].to_numpy(zero_copy_only=False), final)
        table = table.append_column("_depth", pa.array(depth)).append_column("_final", pa.array(final, pa.float32()))
        table, rank = _ranked(table, [("_depth", "descending"), ("_final", "descending"), (DOC_ID, "ascending")])
        table = table.append_column(RANK, pa.array(rank))
        if self.top_k is not None:
            table = table.filter(pa.array(rank <= self.top_k))
        model = pa.array(np.array(self.models, dtype=object)[table["_depth"].to_numpy() - 1], pa.string())
        columns = [c for i in range(1, stages + 1) for c in (stage_score(i), stage_rank(i))]
        return _output(table, table["_final"], model, columns, self.extra_columns)


def rank_queries(table: pa.Table, ranker: Ranker | StageRanker | CascadeRanker) -> pa.Table:
    """map_groups entry point (Ray names the stage after this function)."""
    return ranker(table)
