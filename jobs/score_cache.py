"""The score cache: last night's scores, so a nightly run scores only new or changed pairs.

A pair's score depends on the model (id, revision), its settings (backend, max_length,
query cap, activation, pooling, the LLM template, default instruction and yes/no
tokens), the dtype the actor resolved, and the pair's texts (and per-row instruction).
The settings make a *namespace*, a directory of its own:
    <cache.path>/<namespace>/part-<run id>-NNNNN.parquet    key: fixed_size_binary(16), score: float32
    <cache.path>/<namespace>/_settings.json                  what the namespace stands for
The key is a 128-bit BLAKE2b of the resolved dtype, instruction, query and document, so
another model, template or dtype never hits, and neither does a changed text.

After a successful run the namespace holds exactly that run's pairs (the previous files
are removed after the new ones are written), so the cache stays the size of one night.
The driver loads it once into sorted arrays and puts them in Ray's object store, where
every actor on a node reads the same copy (zero-copy): about 20 bytes a pair.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from fsspec.implementations.local import LocalFileSystem

from jobs.checkpoints import fingerprint
from jobs.fs import arrow_filesystem, visible_parquet
from jobs.schema import SCORE, cache_hit_column, cache_key_column

KEY_TYPE = pa.binary(16)
# Settings that change how fast a score is computed, not what it is.
NOT_IN_NAMESPACE = {"max_tokens_per_batch", "compile", "dtype"}


def namespace(reranker: dict[str, Any]) -> str:
    """The cache directory name for a reranker config (a `RerankerConfig.model_dump()`)."""
    return fingerprint({k: v for k, v in reranker.items() if k not in NOT_IN_NAMESPACE})


def pair_keys(dtype: str, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> pa.FixedSizeBinaryArray:
    """128-bit keys of (dtype, instruction, query, doc); each part length-prefixed."""
    head = _part(dtype)
    out = bytearray()
    for i, (query, doc) in enumerate(zip(queries, docs)):
        h = hashlib.blake2b(head, digest_size=16)
        h.update(_part((instructions[i] if instructions else None) or ""))
        h.update(_part(query))
        h.update(_part(doc))
        out += h.digest()
    return pa.FixedSizeBinaryArray.from_buffers(KEY_TYPE, len(docs), [None, pa.py_buffer(bytes(out))])


def _part(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "little") + data


def _halves(keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(keys.buffers()[1], dtype="<u8", count=2 * (len(keys) + keys.offset))
    pairs = raw.reshape(-1, 2)[keys.offset:]
    return pairs[:, 0], pairs[:, 1]


@dataclass
class CacheIndex:
    """Sorted keys (as two uint64 halves) and their scores: lookups by binary search."""

    hi: np.ndarray
    lo: np.ndarray
    score: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> CacheIndex:
        keys = table["key"].combine_chunks() if len(table) else pa.array([], KEY_TYPE)
        hi, lo = _halves(keys)
        order = np.lexsort((lo, hi))
        score = table["score"].to_numpy().astype(np.float32) if len(table) else np.empty(0, np.float32)
        return cls(np.ascontiguousarray(hi[order]), np.ascontiguousarray(lo[order]), score[order])

    def __len__(self) -> int:
        return len(self.hi)

    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, scores) for `keys`; scores are 0 where not found."""
        hi, lo = _halves(keys)
        found = np.zeros(len(keys), dtype=bool)
        scores = np.zeros(len(keys), dtype=np.float32)
        if not len(self.hi):
            return found, scores
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        for i in np.flatnonzero(right > left):  # (several entries share `hi` only by a 64-bit collision)
            at = left[i] + np.flatnonzero(self.lo[left[i]:right[i]] == lo[i])
            if len(at):
                found[i], scores[i] = True, self.score[at[0]]
        return found, scores


class ScoreCache:
    """One namespace of the cache under `url` (local or s3://)."""

    def __init__(self, url: str, reranker: dict[str, Any]) -> None:
        self.fs, root = fsspec.core.url_to_fs(url)
        self.namespace = namespace(reranker)
        self.dir = posixpath.join(root, self.namespace)
        self.settings = {k: v for k, v in reranker.items() if k not in NOT_IN_NAMESPACE}

    @property
    def url(self) -> str:
        return self.dir if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(self.dir)

    def files(self) -> list[str]:
        return visible_parquet(self.fs, self.dir) if self.fs.isdir(self.dir) else []

    def load(self) -> CacheIndex:
        import pyarrow.dataset as pads

        files = self.files()
        if not files:
            return CacheIndex.from_table(pa.table({"key": pa.array([], KEY_TYPE), "score": pa.array([], pa.float32())}))
        data = pads.dataset(files, filesystem=arrow_filesystem(self.fs), format="parquet")
        return CacheIndex.from_table(data.to_table(columns=["key", "score"]))

    def staging(self, run_id: str) -> str:
        return posixpath.join(self.dir, f"_staging-{run_id}")

    def publish(self, run_id: str) -> int:
        """Move the files written under staging(run_id) in, then remove the older ones.
        (Any mix of old and new files is a valid cache: a key always maps to its score.)"""
        old = self.files()
        staged = sorted(p for p in self.fs.find(self.staging(run_id)) if p.endswith(".parquet"))
        for i, src in enumerate(staged):
            self.fs.mv(src, posixpath.join(self.dir, f"part-{run_id}-{i:05d}.parquet"))
        self.fs.pipe_file(posixpath.join(self.dir, "_settings.json"),
                          json.dumps(self.settings, indent=1, sort_keys=True, default=str).encode())
        for path in old:
            self.fs.rm(path)
        if self.fs.exists(self.staging(run_id)):
            self.fs.rm(self.staging(run_id), recursive=True)
        return len(staged)


    def discard(self, run_id: str) -> None:
        """Remove what a failed run staged."""
        if self.fs.exists(self.staging(run_id)):
            self.fs.rm(self.staging(run_id), recursive=True)


class RunCaches:
    """The score caches of one run's scorers (cascade stages or teachers), by scorer index.
    Scorers whose settings are the same share one namespace, so it is loaded, put in the
    object store, published and discarded once. No cache.path: no caches, refs all None."""

    def __init__(self, url: str | None, rerankers: list[dict[str, Any]]) -> None:
        by_namespace: dict[str, ScoreCache] = {}
        self.of = [by_namespace.setdefault(namespace(r), ScoreCache(url, r)) for r in rerankers] if url else []
        self.unique = list(by_namespace.values())
        self.scorers = len(rerankers)
        self.entries: dict[str, int] = {}  # namespace -> pairs it held when loaded

    def __bool__(self) -> bool:
        return bool(self.of)

    def broadcast(self) -> list[Any]:
        """Per scorer, an ObjectRef of its cache's CacheIndex (None without a cache)."""
        refs = {}
        for cache in self.unique:
            index = cache.load()
            self.entries[cache.namespace] = len(index)
            refs[cache.namespace] = ray.put(index)
        return [refs[c.namespace] for c in self.of] if self.of else [None] * self.scorers

    def write(self, scorer: int, files: list[str], fs: fsspec.AbstractFileSystem, run_id: str,
              score_column: str) -> None:
        write_cache(self.of[scorer], files, fs, run_id, score_column)

    def publish(self, run_id: str) -> None:
        for cache in self.unique:
            cache.publish(run_id)

    def discard(self, run_id: str) -> None:
        for cache in self.unique:
            cache.discard(run_id)


def cache_rows(batch: pa.Table, key_column: str, score_column: str) -> pa.Table:
    """map_batches: the (key, score) rows of scored pairs, for the next run's cache."""
    valid = pc.and_(pc.is_valid(batch[key_column]), pc.is_valid(batch[score_column]))
    kept = batch.filter(valid)
    return pa.table({"key": kept[key_column], "score": kept[score_column].cast(pa.float32())})


def write_cache(cache: ScoreCache, checkpoint_files: list[str], fs: fsspec.AbstractFileSystem, run_id: str,
                score_column: str = SCORE) -> None:
    """Stage this run's (key, score) rows for `publish`, read from the checkpoints."""
    import ray.data

    from jobs.ray_runtime import ray_filesystem

    key = cache_key_column(score_column)
    ds = ray.data.read_parquet(checkpoint_files, filesystem=ray_filesystem(fs), columns=[key, score_column])
    ds = ds.map_batches(cache_rows, batch_format="pyarrow", fn_kwargs={"key_column": key, "score_column": score_column})
    ds.write_parquet(cache.staging(run_id), filesystem=ray_filesystem(cache.fs))


def cache_hits(fs: fsspec.AbstractFileSystem, files: list[str], score_column: str) -> int:
    """How many of the pairs in `files` took their `score_column` from the cache."""
    import pyarrow.dataset as pads

    hit = cache_hit_column(score_column)
    data = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet") if files else None
    if data is None or hit not in data.schema.names:
        return 0
    return data.count_rows(filter=pc.field(hit))
