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
Its files are split by key range, and the next run serves them from shard actors, each
holding one range (jobs.cache_shards): about 20 bytes a pair, none of it in the driver.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import fsspec
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from jobs.cache_shards import ShardedIndex, cache_rows, range_count, range_file_name
from jobs.checkpoints import fingerprint
from jobs.config import CacheConfig
from jobs.fs import arrow_filesystem, visible_parquet
from jobs.schema import cache_hit_column, cache_key_column
from jobs.stages import footer_rows
from reranker_actors.base import RerankerConfig
from reranker_actors.cache_keys import KEY_TYPE, CacheIndex, namespace_settings, pair_keys
from reranker_actors.columns import PASSAGE_COLUMNS

__all__ = ["KEY_TYPE", "CacheIndex", "RunCaches", "ScoreCache", "namespace", "pair_keys"]

_STAGED_RANGE = re.compile(r"/ranges-(\d+)/range=(\d+)/[^/]+$")


def namespace(reranker: RerankerConfig | dict[str, Any]) -> str:
    """The cache directory name for a reranker config (or its `model_dump()`)."""
    return fingerprint(namespace_settings(reranker))


class ScoreCache:
    """One namespace of the cache under `url` (local or s3://)."""

    def __init__(self, url: str, reranker: RerankerConfig | dict[str, Any]) -> None:
        self.fs, root = fsspec.core.url_to_fs(url)
        self.settings = namespace_settings(reranker)
        self.namespace = fingerprint(self.settings)
        self.dir = posixpath.join(root, self.namespace)

    @property
    def url(self) -> str:
        return self.dir if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(self.dir)

    def files(self) -> list[str]:
        return visible_parquet(self.fs, self.dir) if self.fs.isdir(self.dir) else []

    def pairs(self) -> int:
        """Pairs the namespace holds (from the files' footers)."""
        return footer_rows(self.fs, self.files())

    def staging(self, run_id: str) -> str:
        return posixpath.join(self.dir, f"_staging-{run_id}")

    def publish(self, run_id: str) -> int:
        """Move the files written under staging(run_id) in, then remove the older ones.
        (Any mix of old and new files is a valid cache: a key always maps to its score.)"""
        old = self.files()
        staged = sorted(p for p in self.fs.find(self.staging(run_id)) if p.endswith(".parquet"))
        for i, src in enumerate(staged):
            found = _STAGED_RANGE.search(src)
            name = (range_file_name(run_id, int(found.group(2)), int(found.group(1)), i) if found
                    else f"part-{run_id}-{i:05d}.parquet")
            self.fs.mv(src, posixpath.join(self.dir, name))
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
    Scorers whose settings are the same share one namespace, so it is served, published and
    discarded once. No cache.path: no caches, lookups all None."""

    def __init__(self, cfg: CacheConfig, rerankers: list[RerankerConfig], passage_columns: bool = False) -> None:
        """`passage_columns`: the scorers write (and the cache keeps) the passage columns."""
        by_namespace: dict[str, ScoreCache] = {}
        url = cfg.path
        self.of = [by_namespace.setdefault(namespace(r), ScoreCache(url, r)) for r in rerankers] if url else []
        self.unique = list(by_namespace.values())
        self.scorers = len(rerankers)
        self.shard_pairs = cfg.shard_pairs
        self.entries: dict[str, int] = {}  # namespace -> pairs it held when served
        self.served: dict[str, ShardedIndex] = {}
        self.passages = passage_columns

    def __bool__(self) -> bool:
        return bool(self.of)

    def serve(self) -> list[ShardedIndex | None]:
        """Per scorer, the ShardedIndex its actors look keys up in (None without a cache)."""
        for cache in self.unique:
            files = cache.files()  # (listed and their footers read once: requests on S3)
            self.entries[cache.namespace] = footer_rows(cache.fs, files)
            self.served[cache.namespace] = ShardedIndex.serve(cache.fs, files, self.entries[cache.namespace],
                                                              self.shard_pairs, passages=self.passages)
        return [self.served[c.namespace] for c in self.of] if self.of else [None] * self.scorers

    def close(self) -> None:
        """Stop the shard actors."""
        for index in self.served.values():
            index.close()

    def write(self, scorer: int, files: list[str], fs: fsspec.AbstractFileSystem, run_id: str,
              score_column: str) -> None:
        write_cache(self.of[scorer], files, fs, run_id, score_column, self.shard_pairs, self.passages)

    def publish(self, run_id: str) -> None:
        for cache in self.unique:
            cache.publish(run_id)

    def discard(self, run_id: str) -> None:
        for cache in self.unique:
            cache.discard(run_id)


def write_cache(cache: ScoreCache, checkpoint_files: list[str], fs: fsspec.AbstractFileSystem, run_id: str,
                score_column: str, shard_pairs: int, passages: bool = False) -> None:
    """Stage this run's (key, score) rows (and `passages`: the passage columns) for `publish`,
    read from the checkpoints and split into key-range files (one range per hash partition,
    so one file per range)."""
    import ray.data

    from jobs.ray_runtime import ray_filesystem

    key = cache_key_column(score_column)
    ranges = range_count(footer_rows(fs, checkpoint_files), shard_pairs)
    ds = ray.data.read_parquet(checkpoint_files, filesystem=ray_filesystem(fs),
                               columns=[key, score_column, *(PASSAGE_COLUMNS if passages else ())])
    ds = ds.map_batches(cache_rows, batch_format="pyarrow",
                        fn_kwargs={"key_column": key, "score_column": score_column, "ranges": ranges})
    if ranges > 1:
        ds = ds.repartition(ranges, keys=["range"])
    ds.write_parquet(posixpath.join(cache.staging(run_id), f"ranges-{ranges}"), partition_cols=["range"],
                     filesystem=ray_filesystem(cache.fs))


def cache_hits(fs: fsspec.AbstractFileSystem, files: list[str], score_column: str) -> int:
    """How many of the pairs in `files` took their `score_column` from the cache."""
    import pyarrow.dataset as pads

    hit = cache_hit_column(score_column)
    data = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet") if files else None
    if data is None or hit not in data.schema.names:
        return 0
    return data.count_rows(filter=pc.field(hit))
