"""Per-input-shard checkpoints: what lets a rerun after a crash resume instead of start over.

Layout under output.path (hidden from readers: every name starts with `_`):
    _checkpoints/<fingerprint>/shards/<shard_id>.parquet   the scored rows of one input file
    _checkpoints/<fingerprint>/queries/<shard_id>.parquet  its distinct query ids (see queries_disjoint)
    _checkpoints/<fingerprint>/manifest/<shard_id>.json    written after them: rows, sha256, ...
fingerprint: a hash of every config value that changes what is scored or how
  (reranker, input mapping and policies); another config never reuses these files.
shard_id: a hash of the input file's URL and fsspec `ukey` (size + mtime locally, the
  ETag on S3), so an input file that changed is scored again.
A shard counts as done only when its manifest entry exists and the shard file's sha256
matches it. A shard file is written whole (local: temp name, then rename; S3: one PUT),
so a crash leaves at worst a shard without a manifest entry, which the rerun rewrites.
`_checkpoints/` is removed after a successful commit.

Granularity: Ray Data packs small Parquet files into one read task (up to
RAY_DATA_PARQUET_BIN_PACKING_BYTES, 128 MiB); files read together complete together.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.inputs import InputFile
from jobs.schema import (
    ATTENTION,
    BATCH_END,
    BATCH_START,
    DOC_ID,
    DTYPE,
    HIT_PREFIX,
    QUERY_ID,
    SCORE,
    SHARD,
    SKIP_REASON,
    TRUNCATED,
    UNITS,
)

FORMAT_VERSION = 2
CHECKPOINTS = "_checkpoints"


def fingerprint(parts: dict) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_id(fs: fsspec.AbstractFileSystem, file: InputFile) -> str:
    return hashlib.sha256(f"{file.url}\0{fs.ukey(file.path)}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ShardEntry:
    """One manifest entry: a completed input shard."""

    input: str  # the input file's URL
    input_size: int
    rows_in: int  # rows of the input file (queries, for the nested layout)
    rows: int  # pairs in the shard file (valid and skipped)
    skipped: int  # pairs with a skip reason (quarantined)
    truncated: int  # pairs whose query or doc was cut to max_length
    dtypes: list[str]
    sha256: str
    file: str  # the shard file's name
    cached: int = 0  # pairs whose score came from the score cache (summed over scorers)
    attention: list[str] = field(default_factory=list)  # the attention paths the scorers ran


class Checkpoints:
    def __init__(self, fs: fsspec.AbstractFileSystem, output_root: str, fp: str) -> None:
        self.fs = fs
        self.root = posixpath.join(output_root, CHECKPOINTS, fp)

    def _shard_path(self, sid: str) -> str:
        return posixpath.join(self.root, "shards", f"{sid}.parquet")

    def _entry_path(self, sid: str) -> str:
        return posixpath.join(self.root, "manifest", f"{sid}.json")

    def _queries_path(self, sid: str) -> str:
        return posixpath.join(self.root, "queries", f"{sid}.parquet")

    def completed(self, sid: str) -> ShardEntry | None:
        """The manifest entry of a shard whose file is intact, else None."""
        entry_path, shard_path = self._entry_path(sid), self._shard_path(sid)
        if not self.fs.exists(entry_path) or not self.fs.exists(shard_path):
            return None
        entry = ShardEntry(**json.loads(self.fs.cat_file(entry_path)))
        if hashlib.sha256(self.fs.cat_file(shard_path)).hexdigest() != entry.sha256:
            return None
        return entry

    def write(self, sid: str, file: InputFile, table: pa.Table) -> ShardEntry:
        """Write one complete shard, then its manifest entry (the commit point)."""
        truncated = int(pc.sum(table[TRUNCATED]).as_py() or 0)
        dtypes, attention = (sorted({d for v in pc.unique(table[c]).to_pylist() if v for d in v.split(",")})
                             if c in table.column_names else [] for c in (DTYPE, ATTENTION))
        hits = [c for c in table.column_names if c.startswith(HIT_PREFIX)]
        cached = sum(int(pc.sum(table[c]).as_py() or 0) for c in hits)
        internal = [SHARD, UNITS, TRUNCATED, DTYPE, ATTENTION, BATCH_START, BATCH_END, *hits]
        table = table.drop_columns([c for c in internal if c in table.column_names])
        # Deterministic content whatever order the blocks arrived in.
        scores = [(c, "descending") for c in table.column_names if c == SCORE or c.startswith("score_")]
        table = table.take(pc.sort_indices(table, [(QUERY_ID, "ascending"), (DOC_ID, "ascending"), *scores]))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        path = self._shard_path(sid)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.makedirs(posixpath.dirname(self._entry_path(sid)), exist_ok=True)
        tmp = f"{path}.tmp"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)
        queries = io.BytesIO()
        pq.write_table(pa.table({QUERY_ID: pc.unique(table[QUERY_ID])}), queries)
        self.fs.makedirs(posixpath.dirname(self._queries_path(sid)), exist_ok=True)
        self.fs.pipe_file(self._queries_path(sid), queries.getvalue())
        entry = ShardEntry(
            input=file.url, input_size=file.size, rows_in=file.num_rows, rows=len(table),
            skipped=len(table) - table[SKIP_REASON].null_count,
            truncated=truncated, dtypes=dtypes, attention=attention, sha256=hashlib.sha256(data).hexdigest(),
            cached=cached,
            file=posixpath.basename(path),
        )
        self.fs.pipe_file(self._entry_path(sid), json.dumps(asdict(entry), indent=1).encode())
        return entry

    def shard_files(self, sids: list[str]) -> list[str]:
        return [self._shard_path(s) for s in sids]

    def queries_disjoint(self, sids: list[str]) -> bool:
        """Whether no query has rows in two of these shards: then each shard can be ranked
        alone, without gathering a query's rows from every shard first."""
        def read(sid: str) -> pa.Array:
            with self.fs.open(self._queries_path(sid), "rb") as f:
                return pq.read_table(f)[QUERY_ID].combine_chunks()
        with ThreadPoolExecutor(max_workers=16) as pool:  # (each read is a request on S3)
            ids = list(pool.map(read, sids))
        total = sum(len(a) for a in ids)
        return total == len(pc.unique(pa.chunked_array(ids, pa.string()))) if total else True

    def remove_all(self) -> None:
        """After a successful commit: these and any other config's checkpoints are stale."""
        parent = posixpath.dirname(self.root)
        if self.fs.exists(parent):
            self.fs.rm(parent, recursive=True)


@dataclass
class _Partial:
    tables: list[pa.Table]
    input_rows: int = 0  # input rows seen complete-or-started (rows with _units > 0)
    pairs_expected: int = 0  # sum of _units
    pairs: int = 0


class ShardAssembler:
    """Collects scored blocks per input shard and hands out each shard once it is complete.

    Every input row yields `_units` >= 1 pairs (nested rows explode; a row with no
    candidates yields one skipped pair), and its first pair carries that count. A shard
    is complete when it has seen the first pair of every one of its input rows, and as
    many pairs as those rows announced.
    """

    def __init__(self, files: list[InputFile]) -> None:
        self.files = files
        self.partial: dict[int, _Partial] = {}
        self.finished: set[int] = set()

    def add(self, batch: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        shard = batch[SHARD].to_numpy(zero_copy_only=False)
        units = batch[UNITS].to_numpy(zero_copy_only=False)
        for index in np.unique(shard).tolist():
            mask = shard == index
            if index in self.finished:
                raise RuntimeError(f"rows of {self.files[index].url} arrived after it was complete")
            part = self.partial.setdefault(index, _Partial([]))
            part.tables.append(batch.filter(pa.array(mask)))
            part.input_rows += int((units[mask] > 0).sum())
            part.pairs_expected += int(units[mask].sum())
            part.pairs += int(mask.sum())
            if part.input_rows == self.files[index].num_rows and part.pairs == part.pairs_expected:
                del self.partial[index]
                self.finished.add(index)
                yield index, pa.concat_tables(part.tables)

    def check_complete(self) -> None:
        missing = [f.url for i, f in enumerate(self.files) if i not in self.finished]
        if missing:
            raise RuntimeError(f"the score stage ended before finishing {len(missing)} input file(s), "
                               f"e.g. {missing[0]}")
