"""Checkpoints of the score stage, in row ranges of the input files: what lets a rerun after
a crash resume where the crash happened instead of starting over.

Layout under output.path (hidden from readers: every name starts with `_`):
    _checkpoints/<fingerprint>/parts/<part>.parquet    the scored rows of some row ranges of one input file
    _checkpoints/<fingerprint>/queries/<part>.parquet  their distinct query ids (see queries_disjoint)
    _checkpoints/<fingerprint>/manifest/<part>.json    written after them: file, ranges (encoded), counts, sha256
fingerprint: a hash of every config value that changes what is scored or how
  (reranker, input mapping and policies); another config never reuses these files.
shard id (`sid`): a hash of the input file's URL and fsspec `ukey` (size + mtime locally,
  the ETag on S3), so an input file that changed is scored again; its old parts are ignored.
The score stage reads the input in units of about one actor batch (jobs.units). The driver
collects the input rows whose pairs all came out of the actor pool and writes them within
FLUSH_S plus one write, on a thread of its own, one part per input file (RowAssembler,
PartWriter). A part counts only when its manifest entry exists and the part's sha256
matches it. A part is written whole (local: temp name, then rename; S3: one PUT), so a
crash leaves at worst a part without a manifest entry, which is ignored. A crash loses the
batches in flight and the rows that left the pool in the last second or so (a few on S3).
`_checkpoints/` is removed after a successful commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

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
    ROW,
    SCORE,
    SHARD,
    SKIP_REASON,
    TRUNCATED,
    UNITS,
)
from jobs.units import Ranges, Unit, as_ranges, decode_ranges, encode_ranges, merge, runs
from reranker_actors.columns import CAPPED, PASSAGES

FORMAT_VERSION = 4  # 4: ranges encoded (jobs.units.encode_ranges)
CHECKPOINTS = "_checkpoints"
FLUSH_S = 0.5  # complete rows wait at most this long, plus one write, before theirs starts


def fingerprint(parts: dict) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_id(fs: fsspec.AbstractFileSystem, file: InputFile) -> str:
    return hashlib.sha256(f"{file.url}\0{file.version or fs.ukey(file.path)}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PartEntry:
    """One manifest entry: the scored rows of some row ranges of one input file."""

    sid: str  # the input file's shard id
    input: str  # the input file's URL
    ranges: str  # the [start, stop) input row ranges the part holds (jobs.units.encode_ranges)
    rows_in: int  # input rows in those ranges (queries, for the nested layout)
    rows: int  # pairs in the part file (valid and skipped)
    skipped: int  # pairs with a skip reason (quarantined)
    truncated: int  # pairs whose query or doc was cut to max_length
    dtypes: list[str]
    sha256: str
    file: str  # the part file's name
    cached: int = 0  # pairs whose score came from the score cache (summed over scorers)
    attention: list[str] = field(default_factory=list)  # the attention paths the scorers ran
    first: int = 0  # the first input row it holds (its order among the file's parts)
    passages: int = 0  # with passages: passages scored for its pairs (the rerank job's scorer)
    capped: int = 0  # with passages: pairs whose document had more than passages.max_per_doc

    def row_ranges(self) -> Ranges:
        return decode_ranges(self.ranges)

    def counts(self) -> PartEntry:
        """This entry less its ranges, which only planning reads (from the manifest): what
        the driver keeps of every part (the ranges would cost it a few bytes a pair)."""
        return replace(self, ranges="")


@dataclass
class FileParts:
    """The checkpoint parts of one input file."""

    files: list[str]
    pairs: int


class Checkpoints:
    def __init__(self, fs: fsspec.AbstractFileSystem, output_root: str, fp: str) -> None:
        self.fs = fs
        self.root = posixpath.join(output_root, CHECKPOINTS, fp)

    def _path(self, kind: str, name: str, ext: str = "parquet") -> str:
        return posixpath.join(self.root, kind, f"{name}.{ext}")

    def part_file(self, entry: PartEntry) -> str:
        return self._path("parts", entry.file.removesuffix(".parquet"))

    def load(self, sids: list[str]) -> list[PartEntry]:
        """The entries of the intact parts of the input files `sids` (another run's, or this
        config's for input files that changed since, are ignored), in input and row order."""
        manifest = posixpath.join(self.root, "manifest")
        if not self.fs.exists(manifest):
            return []
        order = {sid: i for i, sid in enumerate(sids)}
        with ThreadPoolExecutor(max_workers=16) as pool:  # (each read is a request on S3)
            entries = [e for e in pool.map(self._entry, self.fs.ls(manifest, detail=False))
                       if e is not None and e.sid in order]
            intact = list(pool.map(self._intact, entries))
        entries = sorted((e for e, ok in zip(entries, intact, strict=True) if ok),
                         key=lambda e: (order[e.sid], e.first))
        _refuse_overlaps(entries, self.root)
        return entries

    def _entry(self, path: str) -> PartEntry | None:
        try:
            return PartEntry(**json.loads(self.fs.cat_file(path)))
        except (ValueError, TypeError):  # a torn or foreign file: its part is scored again
            return None

    def _intact(self, entry: PartEntry) -> bool:
        path = self.part_file(entry)
        return self.fs.exists(path) and hashlib.sha256(self.fs.cat_file(path)).hexdigest() == entry.sha256

    def write(self, sid: str, file: InputFile, ranges: Ranges, table: pa.Table) -> PartEntry:
        """Write one part (the rows of `ranges` of `file`), then its manifest entry (the commit point)."""
        truncated = int(pc.sum(table[TRUNCATED]).as_py() or 0)
        dtypes, attention = (sorted({d for v in pc.unique(table[c]).to_pylist() if v for d in v.split(",")})
                             if c in table.column_names else [] for c in (DTYPE, ATTENTION))
        hits = [c for c in table.column_names if c.startswith(HIT_PREFIX)]
        cached = sum(int(pc.sum(table[c]).as_py() or 0) for c in hits)
        capped, passages = (int(pc.sum(table[c]).as_py() or 0) if c in table.column_names else 0
                            for c in (CAPPED, PASSAGES))
        internal = [SHARD, ROW, UNITS, TRUNCATED, DTYPE, ATTENTION, BATCH_START, BATCH_END, CAPPED, *hits]
        table = table.drop_columns([c for c in internal if c in table.column_names])
        # Deterministic content whatever order the blocks arrived in.
        scores = [(c, "descending") for c in table.column_names if c == SCORE or c.startswith("score_")]
        table = table.take(pc.sort_indices(table, [(QUERY_ID, "ascending"), (DOC_ID, "ascending"), *scores]))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        ranges = merge(ranges)
        name = f"{sid}-{int(ranges[0, 0]):012d}"
        path = self._path("parts", name)
        for kind in ("parts", "queries", "manifest"):
            self.fs.makedirs(posixpath.join(self.root, kind), exist_ok=True)
        self.fs.pipe_file(f"{path}.tmp", data)
        self.fs.mv(f"{path}.tmp", path)
        queries = io.BytesIO()
        pq.write_table(pa.table({QUERY_ID: pc.unique(table[QUERY_ID])}), queries)
        self.fs.pipe_file(self._path("queries", name), queries.getvalue())
        entry = PartEntry(
            sid=sid, input=file.url, ranges=encode_ranges(ranges), rows_in=int((ranges[:, 1] - ranges[:, 0]).sum()),
            rows=len(table), skipped=len(table) - table[SKIP_REASON].null_count, truncated=truncated,
            dtypes=dtypes, sha256=hashlib.sha256(data).hexdigest(), file=posixpath.basename(path),
            cached=cached, attention=attention, first=int(ranges[0, 0]), passages=passages, capped=capped,
        )
        self.fs.pipe_file(self._path("manifest", name, "json"), json.dumps(asdict(entry), indent=1).encode())
        return entry

    def by_input(self, entries: list[PartEntry]) -> list[FileParts]:
        """The parts of `entries`, per input file (in the entries' order)."""
        groups: dict[str, FileParts] = {}
        for entry in entries:
            group = groups.setdefault(entry.sid, FileParts([], 0))
            group.files.append(self.part_file(entry))
            group.pairs += entry.rows
        return list(groups.values())

    def queries_disjoint(self, entries: list[PartEntry]) -> bool:
        """Whether no query has rows in two input files: then each file's parts can be ranked
        alone, without gathering a query's rows from every file first. (One file's parts at
        a time: in the run layout every part holds thousands of queries.)"""
        def read(entry: PartEntry) -> pa.Array:
            with self.fs.open(self._path("queries", entry.file.removesuffix(".parquet")), "rb") as f:
                return pq.read_table(f)[QUERY_ID].combine_chunks()
        per_file: dict[str, list[PartEntry]] = {}
        for entry in entries:
            per_file.setdefault(entry.sid, []).append(entry)
        distinct = []
        with ThreadPoolExecutor(max_workers=16) as pool:  # (each read is a request on S3)
            for parts in per_file.values():
                distinct.append(pc.unique(pa.chunked_array(list(pool.map(read, parts)), pa.string())))
        total = sum(len(a) for a in distinct)
        return total == len(pc.unique(pa.chunked_array(distinct, pa.string()))) if total else True

    def remove_all(self) -> None:
        """After a successful commit: these and any other config's checkpoints are stale."""
        parent = posixpath.dirname(self.root)
        if self.fs.exists(parent):
            self.fs.rm(parent, recursive=True)


@dataclass
class _Partial:
    """The pairs of one input row seen so far, while the rest are still being scored (a
    nested row whose candidates two blocks share)."""

    tables: list[pa.Table]
    pairs: int = 0
    announced: int = 0  # the row's `_units`, once its first pair arrived
    firsts: int = 0  # pairs that carried the count (1 when all is well)


class RowAssembler:
    """Collects scored pairs per input row (`_shard`, the unit they were read in, names the
    file; `_row` the row in it) and hands out each row as soon as all its pairs arrived.

    Every input row yields `_units` >= 1 pairs (nested rows explode; a row with no
    candidates yields one skipped pair), and its first pair carries that count. A flat row
    is complete in the block it arrives in; a nested row whose candidates two blocks share
    waits here for the rest. So a row is durable as soon as it left the actor pool, however
    the pool's blocks cut across the read units.
    """

    def __init__(self, units: list[Unit], files: list[InputFile]) -> None:
        self.units, self.files = units, files
        self.unit_file = np.array([u.file for u in units], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum([f.num_rows for f in files])]).astype(np.int64)
        self.done = np.zeros(len(units), dtype=np.int64)  # complete input rows, per unit
        self.unit_rows = np.array([u.num_rows for u in units], dtype=np.int64)
        self.partial: dict[int, _Partial] = {}  # by global row id (file offset + row)

    def _name(self, index: int) -> str:
        unit = self.units[index]
        return f"rows {unit.start}-{unit.stop - 1} of {self.files[unit.file].url}"

    def add(self, batch: pa.Table) -> list[tuple[int, Ranges, pa.Table]]:
        """The input rows that `batch` completed: (file index, row ranges, their pairs) per file."""
        shard = batch[SHARD].to_numpy(zero_copy_only=False)
        gids = self.offsets[self.unit_file[shard]] + batch[ROW].to_numpy(zero_copy_only=False)
        announced = batch[UNITS].to_numpy(zero_copy_only=False)
        rows, inverse, counts = np.unique(gids, return_inverse=True, return_counts=True)
        wanted = np.bincount(inverse, weights=announced, minlength=len(rows))
        firsts = np.bincount(inverse, weights=announced > 0, minlength=len(rows))
        whole = (counts == wanted) & (firsts == 1)
        if self.partial:
            whole &= ~np.isin(rows, np.fromiter(self.partial, np.int64, len(self.partial)))
        complete = [batch.filter(pa.array(whole[inverse]))]
        for i in np.flatnonzero(~whole).tolist():  # (rows two blocks share: few)
            gid = int(rows[i])
            part = self.partial.setdefault(gid, _Partial([]))
            part.tables.append(batch.filter(pa.array(inverse == i)))
            part.pairs += int(counts[i])
            part.announced += int(wanted[i])
            part.firsts += int(firsts[i])
            if part.firsts == 1 and part.pairs == part.announced:
                complete += self.partial.pop(gid).tables
        return self._by_file(pa.concat_tables(complete))

    def _by_file(self, pairs: pa.Table) -> list[tuple[int, Ranges, pa.Table]]:
        """Count complete rows per unit; split them by input file, with their row ranges."""
        if not len(pairs):
            return []
        shard = pairs[SHARD].to_numpy(zero_copy_only=False)
        gids = self.offsets[self.unit_file[shard]] + pairs[ROW].to_numpy(zero_copy_only=False)
        rows, first = np.unique(gids, return_index=True)
        np.add.at(self.done, shard[first], 1)
        over = np.flatnonzero(self.done > self.unit_rows)
        if len(over):
            raise RuntimeError(f"{self._name(int(over[0]))}: a row arrived twice from the actor pool")
        file_of_row = np.searchsorted(self.offsets, rows, side="right") - 1
        file_of_pair = np.searchsorted(self.offsets, gids, side="right") - 1
        return [(file, runs(rows[file_of_row == file] - self.offsets[file]),
                 pairs.filter(pa.array(file_of_pair == file))) for file in np.unique(file_of_row).tolist()]

    def check_complete(self) -> None:
        missing = np.flatnonzero(self.done != self.unit_rows).tolist()
        if missing:
            raise RuntimeError(f"the score stage ended before finishing {len(missing)} unit(s) of the input, "
                               f"e.g. {self._name(missing[0])}")


class PartWriter:
    """Writes complete input rows, one part per input file, on a thread of its own: a write
    starts as soon as rows are waiting and FLUSH_S has passed since the last one started,
    with every row completed since. So a row is durable within FLUSH_S plus one write of
    leaving the actor pool, whenever the next block comes; a slow filesystem (S3) makes
    writes bigger, not the driver slower. Use as a context manager: leaving it writes what
    is waiting and waits for it (raising a failed write's error unless another is on its way)."""

    def __init__(self, checkpoints: Checkpoints, files: list[InputFile], sids: list[str]) -> None:
        self.checkpoints, self.files, self.sids = checkpoints, files, sids
        self.pending: dict[int, list[tuple[Ranges, pa.Table]]] = {}
        self.written: list[PartEntry] = []
        self.error: BaseException | None = None
        self.closing = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self.thread.start()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(raise_error=kind is None)

    def add(self, file: int, ranges: Ranges, table: pa.Table) -> None:
        with self.cond:
            if self.error is not None:
                raise self.error
            self.pending.setdefault(file, []).append((ranges, table))
            self.cond.notify()

    def close(self, raise_error: bool = True) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error

    def _run(self) -> None:
        last = -math.inf
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                while not self.closing and (due := last + FLUSH_S - time.monotonic()) > 0:
                    self.cond.wait(due)
                batch, self.pending = self.pending, {}
            if not batch:
                return  # (closing, and nothing left)
            last = time.monotonic()
            try:
                self._write(batch)
            except BaseException as e:  # noqa: BLE001 - raised in the driver's thread
                with self.cond:
                    self.error = e
                return

    def _write(self, batch: dict[int, list[tuple[Ranges, pa.Table]]]) -> None:
        for index, done in sorted(batch.items()):
            ranges = np.concatenate([as_ranges(rs) for rs, _ in done])  # (write merges them)
            table = pa.concat_tables([t for _, t in done], promote_options="permissive")
            entry = self.checkpoints.write(self.sids[index], self.files[index], ranges, table)
            self.written.append(entry.counts())


def _refuse_overlaps(entries: list[PartEntry], root: str) -> None:
    """Parts of one file may interleave (rows 0-24 and 50-74, then 25-49: units complete out
    of order); two parts holding one row may not."""
    by_file: dict[str, list[PartEntry]] = {}
    for entry in entries:
        by_file.setdefault(entry.sid, []).append(entry)
    for parts in by_file.values():
        ranges = [p.row_ranges() for p in parts]
        r = np.concatenate(ranges)
        owner = np.repeat(np.arange(len(parts)), [len(x) for x in ranges])
        order = np.argsort(r[:, 0], kind="stable")
        r, owner = r[order], owner[order]
        reach = np.maximum.accumulate(r[:, 1])
        clash = np.flatnonzero(r[1:, 0] < reach[:-1])
        if len(clash):
            i = int(clash[0]) + 1
            a, b = parts[owner[int(np.argmax(r[:i, 1]))]], parts[owner[i]]
            raise RuntimeError(f"checkpoints {a.file} and {b.file} both hold rows of {a.input}; "
                               f"remove {root} and rerun")
