"""The score cache served by key range, so that no process holds all of it.

Keys are uniform 128-bit hashes, so their first 64 bits (`hi`) cut the key space into
equal ranges without sampling. A run writes its cache rows into R = 2^b *range files*
(range k of R holds the keys whose `hi` falls in [k, k+1) * 2^64 / R), and the next run
starts K = ceil(pairs / cache.shard_pairs) *shard actors*, each loading the range files
that overlap its own K-th of the key space and keeping only its keys. A scoring actor
asks the shards its keys fall in (`ShardedIndex.lookup`, one request per shard per batch).

The driver only lists files and reads footers: its memory stays flat in the cache size.
Shard actors take no CPU and are spread over the nodes; one that dies (a lost node) is
restarted by Ray and loads its range again, and the lookups it was asked are retried.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from reranker_actors.cache_keys import KEY_TYPE, CacheIndex, key_halves, value_dtype
from reranker_actors.columns import BEST_PASSAGE, BEST_PASSAGE_CHARS, PASSAGE_COLUMNS, PASSAGES

SPACE = 1 << 64  # the values of a key's first 64 bits
# Range files per shard a run writes: a later run with up to this many times the pairs
# still finds each shard's keys in a few files.
RANGES_PER_SHARD = 4
_RANGE_NAME = re.compile(r"-(\d+)of(\d+)-\d+\.parquet$")


def range_count(pairs: int, shard_pairs: int) -> int:
    """How many key-range files a run with `pairs` cache rows writes (a power of two)."""
    wanted = math.ceil(pairs * RANGES_PER_SHARD / shard_pairs)
    return 1 << max(0, wanted - 1).bit_length()


def key_range(keys: pa.Array, ranges: int) -> pa.Array:
    """The range index (0..ranges-1) of each key."""
    hi, _ = key_halves(keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys)
    shift = 64 - (ranges.bit_length() - 1)
    return pa.array((hi >> np.uint64(shift)).astype(np.int32) if shift < 64 else np.zeros(len(hi), np.int32))


def range_file_name(run_id: str, index: int, ranges: int, serial: int) -> str:
    return f"part-{run_id}-{index:05d}of{ranges:05d}-{serial:05d}.parquet"


def file_span(path: str) -> tuple[int, int]:
    """The [start, end) of `hi` a cache file holds: its range, or all keys (one written
    before caches were split by range)."""
    found = _RANGE_NAME.search(path)
    if not found:
        return 0, SPACE
    index, ranges = int(found.group(1)), int(found.group(2))
    return index * SPACE // ranges, (index + 1) * SPACE // ranges


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
class CacheShard:
    """One key range of a cache namespace, loaded from the files that overlap it."""

    def __init__(self, fs: fsspec.AbstractFileSystem, files: list[str], start: int, end: int,
                 columns: tuple[str, str] = ("key", "score"), passages: bool = False) -> None:
        tables = []
        for path in files:
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=[*columns, *(PASSAGE_COLUMNS if passages else ())])
            table = table.rename_columns(["key", "score", *table.column_names[2:]])
            hi, _ = key_halves(table["key"].combine_chunks())
            inside = (hi >= np.uint64(start)) & (hi <= np.uint64(end - 1))
            tables.append(table.filter(pa.array(inside)) if not inside.all() else table)
        self.index = CacheIndex.from_table(pa.concat_tables(tables) if tables else empty_rows(passages))

    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        return self.index.lookup(keys)

    def size(self) -> int:
        return len(self.index)


@dataclass
class ShardedIndex:
    """What a scoring actor looks keys up in: the shard actors, by the start of their range."""

    starts: np.ndarray  # uint64, ascending, starts[0] == 0 (empty without shards)
    shards: list[Any]  # CacheShard handles
    passages: bool = False  # the values carry the passage columns (value_dtype)

    @classmethod
    def serve(cls, fs: fsspec.AbstractFileSystem, files: list[str], pairs: int, shard_pairs: int,
              columns: tuple[str, str] = ("key", "score"), passages: bool = False) -> ShardedIndex:
        """Start the shard actors for `files` (which hold `pairs` rows; their key and score
        `columns`, and with `passages` the passage columns). They load in the background; the
        first lookup waits for them."""
        count = math.ceil(pairs / shard_pairs)
        bounds = [i * SPACE // count for i in range(count + 1)] if count else [0]
        spans = [file_span(p) for p in files]
        shards = []
        for start, end in itertools.pairwise(bounds):
            mine = [p for p, (a, b) in zip(files, spans, strict=True) if a < end and start < b]
            shards.append(CacheShard.remote(fs, mine, start, end, columns, passages))
        return cls(np.array(bounds[:-1] if count else [], dtype=np.uint64), shards, passages)

    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, values) for `keys`; values are 0 where not found."""
        found = np.zeros(len(keys), dtype=bool)
        scores = np.zeros(len(keys), dtype=value_dtype(self.passages))
        if not self.shards or not len(keys):
            return found, scores
        hi, _ = key_halves(keys)
        which = np.searchsorted(self.starts, hi, side="right") - 1
        rows = [np.flatnonzero(which == s) for s in range(len(self.shards))]
        asked = [(r, self.shards[s].lookup.remote(keys.take(pa.array(r)))) for s, r in enumerate(rows) if len(r)]
        for r, (hit, values) in zip([r for r, _ in asked], ray.get([ref for _, ref in asked]), strict=True):
            found[r], scores[r] = hit, values
        return found, scores

    def size(self) -> int:
        """Distinct keys served (waits for the shards to load)."""
        return sum(ray.get([shard.size.remote() for shard in self.shards]))

    def close(self) -> None:
        for shard in self.shards:
            ray.kill(shard)
        self.shards = []


@dataclass
class Chained:
    """Look keys up in each lookup in turn (the first that has a key gives its score)."""

    lookups: list[Any]  # each with lookup(keys) -> (found, scores)

    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        found, scores = self.lookups[0].lookup(keys)
        for source in self.lookups[1:]:
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            hit, values = source.lookup(keys.take(pa.array(todo)))
            found[todo[hit]], scores[todo[hit]] = True, values[hit]
        return found, scores


def empty_rows(passages: bool) -> pa.Table:
    """Cache rows without a row: key and score (and with `passages` the passage columns)."""
    columns = {"key": pa.array([], KEY_TYPE), "score": pa.array([], pa.float32())}
    if passages:
        columns |= {PASSAGES: pa.array([], pa.int32()), BEST_PASSAGE: pa.array([], pa.int32()),
                    BEST_PASSAGE_CHARS: pa.array([], pa.struct([("start", pa.int32()), ("end", pa.int32())]))}
    return pa.table(columns)


def cache_rows(batch: pa.Table, key_column: str, score_column: str, ranges: int) -> pa.Table:
    """map_batches: the (key, score) rows of scored pairs, with their key range, for the
    next run's cache."""
    valid = pc.and_(pc.is_valid(batch[key_column]), pc.is_valid(batch[score_column]))
    kept = batch.filter(valid)
    passages = {c: kept[c] for c in PASSAGE_COLUMNS if c in kept.column_names}  # (a scorer's, with passages)
    return pa.table({"key": kept[key_column], "score": kept[score_column].cast(pa.float32()), **passages,
                     "range": key_range(kept[key_column], ranges)})
