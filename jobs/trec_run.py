"""A TREC run file from ranked output: one `qid Q0 docno rank score tag` line per row.

trec_eval, and pytrec_eval and ir_measures with it, ignore the rank column: they sort each
query's documents by score, descending, ties by docno descending. The ranked output breaks
ties by doc_id ascending, and in a cascade `score` is the last stage's score, which need
not decrease with rank. So that these tools read the output's order, the scores in the
file strictly decrease with rank within each query:

  - where a query's scores already strictly decrease along its ranks, the file holds
    them as they are, at full precision (repr of the float32 value as a Python float);
  - otherwise (a tie, a score that rises, a null or NaN score) the whole query gets
    rank-derived scores: score = -rank (-1 for rank 1, -2 for rank 2, ...).

The rank column is the output's rank. The ranked Parquet part files are read one file and
one batch at a time; rows are grouped by query and in rank order within a query, as the
job writes them (a query may run on into the next batch or file). The file is written
whole: locally under a hidden temporary name in the same directory, renamed into place
when complete; on other filesystems (S3) as one upload (multipart when large) that is
completed at the end and aborted on failure, so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import secrets
from collections.abc import Iterator
from typing import IO

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import ConfigError, InputError
from jobs.schema import DOC_ID, QUERY_ID, RANK, SCORE
from jobs.text_formats import PY_WHITESPACE

COLUMNS = [QUERY_ID, DOC_ID, SCORE, RANK]
BATCH_ROWS = 65_536
_SPACE = "[" + re.escape(PY_WHITESPACE) + "]"


def write_trec(fs: fsspec.AbstractFileSystem, parts: list[str], dest: str, tag: str) -> int:
    """Write the ranked rows of `parts` (Parquet) to `dest` as a TREC run; returns the
    number of lines written. Raises ConfigError for a tag that is not one word, InputError
    for an id that a TREC run cannot hold (empty, or with whitespace)."""
    if not tag or re.search(_SPACE, tag):
        raise ConfigError(f"output.trec_tag {tag!r}: a TREC run's tag must be one word, without spaces")
    lines = 0
    with _written_whole(fs, dest) as out:
        for queries in _whole_queries(fs, parts):
            out.write(_format(queries, tag))
            lines += queries.num_rows
    return lines


def _batches(fs: fsspec.AbstractFileSystem, parts: list[str]) -> Iterator[pa.Table]:
    for part in parts:
        with fs.open(part, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS):
                yield pa.Table.from_batches([batch])


def _whole_queries(fs: fsspec.AbstractFileSystem, parts: list[str]) -> Iterator[pa.Table]:
    """Tables of whole queries: a batch's last query is held back until the next batch
    shows where it ends."""
    held: pa.Table | None = None
    for batch in _batches(fs, parts):
        table = batch if held is None else pa.concat_tables([held, batch])
        if table.num_rows == 0:
            continue
        qids = table[QUERY_ID]
        last = pc.equal(qids, qids[-1]).to_numpy(zero_copy_only=False)
        start = len(last) - int(np.argmin(last[::-1])) if not last.all() else 0
        if start:
            yield table.slice(0, start)
        held = table.slice(start)
    if held is not None and held.num_rows:
        yield held


def _format(table: pa.Table, tag: str) -> pa.Buffer:
    """The lines of whole queries, with the score rule of the module docstring."""
    table = table.combine_chunks()
    qids, docs = (table[name].cast(pa.string()) for name in (QUERY_ID, DOC_ID))
    _check_ids(qids, QUERY_ID)
    _check_ids(docs, DOC_ID)
    if table[RANK].null_count:
        raise ValueError("ranked output has rows without a rank")
    ranks = table[RANK].to_numpy()
    scores = table[SCORE].cast(pa.float64()).fill_null(np.nan).to_numpy()
    same = np.zeros(len(ranks), bool)  # the row's query is the previous row's
    same[1:] = pc.equal(qids[1:], qids[:-1]).to_numpy(zero_copy_only=False)
    unordered = np.flatnonzero(same[1:] & (ranks[1:] <= ranks[:-1])) + 1
    if len(unordered):
        row = int(unordered[0])
        raise ValueError(f"ranked output is not in rank order: query {qids[row].as_py()!r}, rank {ranks[row]} "
                         f"after rank {ranks[row - 1]}")
    falls = np.ones(len(ranks), bool)
    falls[1:] = scores[1:] < scores[:-1]
    breaks = (same & ~falls) | np.isnan(scores)
    query = np.cumsum(~same) - 1
    derived = np.flatnonzero((np.bincount(query, weights=breaks) > 0)[query])
    shown = list(map(float.__repr__, scores.tolist()))
    for row, rank in zip(derived.tolist(), ranks[derived].tolist(), strict=True):
        shown[row] = str(-rank)
    lines = pc.binary_join_element_wise(qids, "Q0", docs, table[RANK].cast(pa.string()),
                                        pa.array(shown, pa.string()), tag + "\n", " ").combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
    return lines.buffers()[2][offsets[0]:offsets[-1]]  # the lines, one after another


def _check_ids(ids: pa.ChunkedArray | pa.Array, name: str) -> None:
    bad = pc.or_(pc.equal(pc.binary_length(ids), 0), pc.match_substring_regex(ids, _SPACE))
    if pc.any(bad).as_py():
        value = ids.filter(bad)[0].as_py()
        raise InputError(f"{name} {value!r} cannot be written to a TREC run file: its ids must be non-empty "
                         "and without whitespace")


@contextlib.contextmanager
def _written_whole(fs: fsspec.AbstractFileSystem, dest: str) -> Iterator[IO[bytes]]:
    """A binary file that appears at `dest` complete, or not at all."""
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        directory = posixpath.dirname(dest)
        tmp = posixpath.join(directory, f".{posixpath.basename(dest)}.{secrets.token_hex(4)}.tmp")
        if directory:
            fs.makedirs(directory, exist_ok=True)
        try:
            with fs.open(tmp, "wb") as f:
                yield f
            fs.mv(tmp, dest)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
        return
    f = fs.open(dest, "wb", autocommit=False)
    try:
        yield f
        f.close()
        f.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            f.discard()
        raise
