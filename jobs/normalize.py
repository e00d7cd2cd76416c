"""Ray Data stage: input rows -> canonical (query_id, query, doc_id, doc, ...) pairs, checked.

Runs as plain tasks before the scoring actors. Nested rows (one per query with a
`candidates` list) are exploded to one row per pair. Rows with a null or empty id or
text either fail the job (naming them) or are marked with a skip reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import InputConfig
from jobs.errors import InputError
from jobs.inputs import PATH_COLUMN
from jobs.schema import (
    DOC,
    DOC_ID,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    INSTRUCTION,
    LINE,
    QUERY,
    QUERY_ID,
    ROW,
    SHARD,
    SKIP_REASON,
    UNITS,
)

MAX_LISTED = 10
NO_CANDIDATES = "query has no candidates"

CHECKS = (  # (column, is it text, reason when bad), in order of precedence
    (QUERY_ID, False, "query_id is null or empty"),
    (DOC_ID, False, "doc_id is null or empty"),
    (QUERY, True, "query is null or empty"),
    (DOC, True, "doc is null or empty"),
)


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Texts: string or large_string as given (dictionaries decoded); others cast to string.
    Binary columns are decoded as UTF-8; values that are not valid UTF-8 become null."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:  # invalid UTF-8 somewhere: decode value by value
        return pa.chunked_array([pa.array([_utf8_or_none(v) for v in col.to_pylist()], pa.string())])


def _utf8_or_none(value: bytes | None) -> str | None:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _as_id(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Ids: always plain string, so every output file has the same schema."""
    return _as_string(col).cast(pa.string())


def _bad(col: pa.ChunkedArray, is_text: bool) -> pa.ChunkedArray:
    """True where the value is null, empty, or (for texts) only whitespace."""
    stripped = pc.utf8_trim_whitespace(col) if is_text else col
    return pc.fill_null(pc.equal(pc.utf8_length(stripped), 0), True)


def _not_utf8(raw: pa.ChunkedArray, text: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a binary value did not decode (it was not null before decoding)."""
    return pc.and_(pc.is_valid(raw), pc.is_null(text))


def skip_reasons(table: pa.Table, raw: dict[str, pa.ChunkedArray] | None = None) -> pa.ChunkedArray:
    """Per row, the first failing check's reason, or null when the row is valid.

    `raw` maps canonical text columns to their values before decoding (binary input).
    """
    reasons = pa.chunked_array([pa.nulls(len(table), pa.string())])
    if FIRST_STAGE_SCORE in table.column_names:
        nan = pc.fill_null(pc.is_nan(table[FIRST_STAGE_SCORE]), False)
        reasons = pc.if_else(nan, pa.scalar("first-stage score is NaN"), reasons)
    for column, is_text, reason in reversed([c for c in CHECKS if c[0] in table.column_names]):
        reasons = pc.if_else(_bad(table[column], is_text), pa.scalar(reason), reasons)
        if raw and column in raw:
            not_utf8 = _not_utf8(raw[column], table[column])
            reasons = pc.if_else(not_utf8, pa.scalar(f"{column} is not valid UTF-8"), reasons)
    return reasons


def _carried(batch: pa.Table, name: str, kind: pa.DataType) -> pa.ChunkedArray:
    """The read's column `name` (zeros when the rows did not come from jobs.units)."""
    if name in batch.column_names:
        return batch[name]
    return pa.chunked_array([pa.array(np.zeros(len(batch)), kind)])


@dataclass(frozen=True)
class Normalizer:
    """Callable for map_batches(batch_format="pyarrow").

    Each pair keeps its input row's `_shard` (the unit it was read in, jobs.units) and `_row`
    (the row's index in its file); `_units` on an input row's first pair says how many pairs
    that row yielded (see jobs.checkpoints.RowAssembler).
    """

    cfg: InputConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        c = self.cfg.columns
        units = np.ones(len(batch), dtype=np.int32)
        empty = None
        if self.cfg.layout == "nested":
            batch, units, empty = self._explode(batch)
        texts = self.cfg.layout != "run"  # (the run layout's texts are joined later: jobs.text_join)
        raw = {QUERY: batch[c.query], DOC: batch[c.doc]} if texts else {}
        cols = {QUERY_ID: _as_id(batch[c.query_id]), QUERY: _as_string(raw[QUERY]) if texts else None,
                DOC_ID: _as_id(batch[c.doc_id]), DOC: _as_string(raw[DOC]) if texts else None}
        cols = {name: col for name, col in cols.items() if col is not None}
        if c.score:
            cols[FIRST_STAGE_SCORE] = batch[c.score].cast(pa.float64())
        if c.rank:
            cols[FIRST_STAGE_RANK] = batch[c.rank].cast(pa.int32())
        if c.instruction and texts:
            cols[INSTRUCTION] = _as_string(batch[c.instruction])
        for name in self.cfg.extra_columns:
            cols[name] = batch[name]
        table = pa.table(cols)
        reasons = skip_reasons(table, raw)
        if empty is not None:  # rows for queries without candidates: quarantined, never an error
            reasons = pc.if_else(pa.array(empty), pa.scalar(NO_CANDIDATES), reasons)
        if self.cfg.on_invalid == "error" and pc.any(_errors(reasons)).as_py():
            raise InputError(describe(table, reasons, batch))
        out = (table.append_column(SKIP_REASON, reasons)
               .append_column(SHARD, _carried(batch, SHARD, pa.int32()))
               .append_column(ROW, _carried(batch, ROW, pa.int64()))
               .append_column(UNITS, pa.array(units, pa.int32())))
        if not texts:  # (where a pair came from, for the errors the join finds: TextCheck)
            out = out.append_column(PATH_COLUMN, batch[PATH_COLUMN]) if PATH_COLUMN in batch.column_names else out
            out = out.append_column(LINE, batch[LINE]) if LINE in batch.column_names else out
        return out

    def _explode(self, batch: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """One row per query with a candidates list -> one row per (query, candidate).

        A query with a null or empty list yields one row with null doc_id and doc, marked
        `empty`, so it is counted and quarantined rather than lost. Returns the rows,
        `_units` per row, and the `empty` mask.
        """
        c = self.cfg.columns
        cands = batch[c.candidates].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(cands), 0).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(cands).to_numpy(zero_copy_only=False)
        no_cands = np.flatnonzero(lengths == 0)
        items = pc.list_flatten(cands)
        take = np.concatenate([parents, no_cands]).astype(np.int64)
        table = batch.drop_columns([c.candidates]).take(pa.array(take))
        placeholder = pa.nulls(len(no_cands), items.type)
        items = pa.concat_arrays([items, placeholder]) if len(no_cands) else items
        inner = [f.name for f in cands.type.value_type]
        wanted = [c.doc_id, c.doc, c.score, c.rank, c.instruction, *self.cfg.extra_columns]
        for name in dict.fromkeys(n for n in wanted if n in inner and n not in table.column_names):
            table = table.append_column(name, pc.struct_field(items, name))
        first = np.ones(len(parents), dtype=bool)
        first[1:] = parents[1:] != parents[:-1]
        units = np.concatenate([np.where(first, lengths[parents], 0), np.ones(len(no_cands))]).astype(np.int32)
        empty = np.concatenate([np.zeros(len(parents), dtype=bool), np.ones(len(no_cands), dtype=bool)])
        return table, units, empty


@dataclass(frozen=True)
class TextCheck:
    """Callable for map_batches(batch_format="pyarrow"), after the run layout's texts were
    joined (jobs.text_join): the text checks the Normalizer makes of flat and nested pairs,
    then the invalid pairs are an error naming their file and row (or line) under
    input.on_invalid: error. Drops where the pairs came from."""

    on_invalid: str

    def __call__(self, table: pa.Table) -> pa.Table:
        found = skip_reasons(table)
        reasons = pc.if_else(pc.is_null(table[SKIP_REASON]), found, table[SKIP_REASON])
        if self.on_invalid == "error" and pc.any(_errors(reasons)).as_py():
            raise InputError(describe(table, reasons, table))
        table = table.set_column(table.column_names.index(SKIP_REASON), SKIP_REASON, reasons)
        return table.drop_columns([c for c in (PATH_COLUMN, LINE) if c in table.column_names])


def _errors(reasons: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a row is invalid (a query without candidates is not an error)."""
    return pc.fill_null(pc.not_equal(reasons, NO_CANDIDATES), False)


def _where(batch: pa.Table, bad: pa.ChunkedArray, shown: int) -> list[str]:
    """The file and row (0-based; a text run's line, 1-based) of the first `shown` bad rows."""
    if PATH_COLUMN not in batch.column_names:
        return [""] * shown
    files = batch[PATH_COLUMN].filter(bad).slice(0, shown).to_pylist()
    if LINE in batch.column_names:
        return [f"{f} line {n}: " for f, n in zip(files, batch[LINE].filter(bad).slice(0, shown).to_pylist(),
                                                   strict=True)]
    if ROW in batch.column_names:
        return [f"{f} row {n}: " for f, n in zip(files, batch[ROW].filter(bad).slice(0, shown).to_pylist(),
                                                  strict=True)]
    return [f"{f}: " for f in files]


def describe(table: pa.Table, reasons: pa.ChunkedArray, batch: pa.Table) -> str:
    """The invalid pairs of `table` (up to MAX_LISTED), with their reasons; where they came
    from, from `batch` (the input rows as read, row for row)."""
    bad = _errors(reasons)
    rows = table.filter(bad).slice(0, MAX_LISTED).to_pylist()
    why = reasons.filter(bad).slice(0, MAX_LISTED).to_pylist()
    where = _where(batch, bad, len(rows)) if len(batch) == len(table) else [""] * len(rows)
    lines = [f"{f}(query_id={r[QUERY_ID]!r}, doc_id={r[DOC_ID]!r}): {w}"
             for r, w, f in zip(rows, why, where, strict=True)]
    total = pc.sum(bad).as_py()
    return (
        f"{total} invalid pair(s) in one input block (showing up to {MAX_LISTED}):\n  - "
        + "\n  - ".join(lines)
        + "\nFix the input, or set input.on_invalid: skip to drop such pairs and count them."
    )
