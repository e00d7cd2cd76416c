"""Ray Data stage: input rows -> canonical (query_id, query, doc_id, doc, ...) pairs, checked.

Runs as plain tasks before the scoring actors. Nested rows (one per query with a
`candidates` list) are exploded to one row per pair. Rows with a null or empty id or
text either fail the job (naming them) or are marked with a skip reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import InputConfig
from jobs.errors import InputError
from jobs.schema import (
    DOC,
    DOC_ID,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    INSTRUCTION,
    QUERY,
    QUERY_ID,
    SKIP_REASON,
)

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): the row's source file
MAX_LISTED = 10

CHECKS = (  # (column, is it text, reason when bad), in order of precedence
    (QUERY_ID, False, "query_id is null or empty"),
    (DOC_ID, False, "doc_id is null or empty"),
    (QUERY, True, "query is null or empty"),
    (DOC, True, "doc is null or empty"),
)


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Texts: string or large_string as given (dictionaries decoded); others cast to string."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
        else col.cast(pa.string())


def _as_id(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Ids: always plain string, so every output file has the same schema."""
    return _as_string(col).cast(pa.string())


def _bad(col: pa.ChunkedArray, is_text: bool) -> pa.ChunkedArray:
    """True where the value is null, empty, or (for texts) only whitespace."""
    stripped = pc.utf8_trim_whitespace(col) if is_text else col
    return pc.fill_null(pc.equal(pc.utf8_length(stripped), 0), True)


def skip_reasons(table: pa.Table) -> pa.ChunkedArray:
    """Per row, the first failing check's reason, or null when the row is valid."""
    reasons = pa.chunked_array([pa.nulls(len(table), pa.string())])
    for column, is_text, reason in reversed(CHECKS):
        reasons = pc.if_else(_bad(table[column], is_text), pa.scalar(reason), reasons)
    return reasons


@dataclass(frozen=True)
class Normalizer:
    """Callable for map_batches(batch_format="pyarrow")."""

    cfg: InputConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        c = self.cfg.columns
        if self.cfg.layout == "nested":
            batch = self._explode(batch)
        cols = {
            QUERY_ID: _as_id(batch[c.query_id]), QUERY: _as_string(batch[c.query]),
            DOC_ID: _as_id(batch[c.doc_id]), DOC: _as_string(batch[c.doc]),
        }
        if c.score:
            cols[FIRST_STAGE_SCORE] = batch[c.score].cast(pa.float64())
        if c.rank:
            cols[FIRST_STAGE_RANK] = batch[c.rank].cast(pa.int32())
        if c.instruction:
            cols[INSTRUCTION] = _as_string(batch[c.instruction])
        for name in self.cfg.extra_columns:
            cols[name] = batch[name]
        table = pa.table(cols)
        reasons = skip_reasons(table)
        if reasons.null_count < len(table) and self.cfg.on_invalid == "error":
            raise InputError(self._describe(table, reasons, batch))
        return table.append_column(SKIP_REASON, reasons)

    def _explode(self, batch: pa.Table) -> pa.Table:
        """One row per query with a candidates list -> one row per (query, candidate)."""
        c = self.cfg.columns
        cands = batch[c.candidates].combine_chunks()
        items = pc.list_flatten(cands)
        table = batch.drop_columns([c.candidates]).take(pc.list_parent_indices(cands))
        inner = [f.name for f in cands.type.value_type]
        wanted = [c.doc_id, c.doc, c.score, c.rank, c.instruction, *self.cfg.extra_columns]
        for name in dict.fromkeys(n for n in wanted if n in inner and n not in table.column_names):
            table = table.append_column(name, pc.struct_field(items, name))
        return table

    def _describe(self, table: pa.Table, reasons: pa.ChunkedArray, batch: pa.Table) -> str:
        bad = pc.is_valid(reasons)
        rows = table.filter(bad).slice(0, MAX_LISTED).to_pylist()
        why = reasons.filter(bad).slice(0, MAX_LISTED).to_pylist()
        files = batch[PATH_COLUMN].filter(bad).to_pylist() if PATH_COLUMN in batch.column_names \
            and len(batch) == len(table) else [None] * len(rows)
        lines = [
            f"{f + ': ' if f else ''}(query_id={r[QUERY_ID]!r}, doc_id={r[DOC_ID]!r}): {w}"
            for r, w, f in zip(rows, why, files)
        ]
        total = len(table) - reasons.null_count
        return (
            f"{total} invalid pair(s) in one input block (showing up to {MAX_LISTED}):\n  - "
            + "\n  - ".join(lines)
            + "\nFix the input, or set input.on_invalid: skip to drop such pairs and count them."
        )
