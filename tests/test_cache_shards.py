"""The score cache split by key range and served by shard actors (jobs.cache_shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from jobs.cache_shards import SPACE, ShardedIndex, file_span, key_range, range_count, range_file_name
from jobs.schema import SCORE, cache_key_column
from jobs.score_cache import ScoreCache, pair_keys, write_cache
from reranker_actors.cache_keys import key_halves
from reranker_actors.cross_encoder import CrossEncoderConfig
from tests.conftest import s3


def keys_and_scores(n: int, tag: str) -> tuple[pa.FixedSizeBinaryArray, np.ndarray]:
    keys = pair_keys("float32", ["q"] * n, [f"{tag} doc {i}" for i in range(n)])
    return keys, np.random.default_rng(len(tag)).normal(size=n).astype(np.float32)


def test_range_files_cut_the_key_space_evenly_and_name_their_range() -> None:
    assert [range_count(p, 100) for p in (0, 1, 25, 26, 100, 101, 1000)] == [1, 1, 1, 2, 4, 8, 64]
    keys, _ = keys_and_scores(4000, "r")
    hi, _ = key_halves(keys)
    for ranges in (1, 2, 16):
        index = key_range(keys, ranges).to_numpy()
        assert index.min() >= 0 and index.max() == ranges - 1
        for k in range(ranges):  # (each key inside the span its range's file name gives)
            start, end = file_span(range_file_name("run", k, ranges, 3))
            inside = (hi >= np.uint64(start)) & (hi <= np.uint64(end - 1))
            assert np.array_equal(inside, index == k)
    assert file_span("ns/part-20261127-00003.parquet") == (0, SPACE)  # (a file from before the split)


def publish(tmp_path: Path, run: str, n: int, shard_pairs: int,
            cache: ScoreCache | None = None) -> tuple[ScoreCache, pa.Array, np.ndarray]:
    """Run write_cache over a checkpoint-like file of n scored pairs, then publish it (into
    a local cache under tmp_path unless `cache`)."""
    keys, scores = keys_and_scores(n, run)
    checkpoint = tmp_path / f"{run}-checkpoint.parquet"
    scores_with_null = pa.array(scores, pa.float32()).to_pylist()
    scores_with_null[0] = None  # (an unscored pair is not cached)
    pq.write_table(pa.table({cache_key_column(SCORE): keys, SCORE: pa.array(scores_with_null, pa.float32()),
                             "doc_id": [str(i) for i in range(n)]}), checkpoint)
    cache = cache or ScoreCache(str(tmp_path / "cache"), CrossEncoderConfig(model="m").model_dump())
    write_cache(cache, [str(checkpoint)], fsspec.filesystem("file"), run, SCORE, shard_pairs)
    cache.publish(run)
    return cache, keys, scores


def test_shard_actors_serve_exactly_the_published_pairs(ray_local: Any, tmp_path: Path) -> None:
    cache, keys, scores = publish(tmp_path, "night1", 900, shard_pairs=300)
    names = sorted(Path(f).name for f in cache.files())
    ranges = range_count(900, 300)  # 16: one file per range (the write shuffles by range)
    assert len(names) == ranges and all(f"of{ranges:05d}-" in n for n in names)
    assert cache.pairs() == 899

    index = ShardedIndex.serve(cache.fs, cache.files(), cache.pairs(), shard_pairs=300)
    try:
        assert len(index.shards) == 3
        sizes = ray.get([s.size.remote() for s in index.shards])
        assert sum(sizes) == 899 and min(sizes) > 200  # (each shard holds its third of the keys only)
        other, _ = keys_and_scores(100, "absent")
        probe = pa.concat_arrays([keys.slice(450), other, keys.slice(0, 450)])
        found, got = index.lookup(probe)
        expected = np.concatenate([np.arange(450, 900), np.full(100, -1), np.arange(0, 450)])
        assert np.array_equal(found, expected > 0)  # (key 0 had no score)
        assert np.array_equal(got[found], scores[expected[found]])
    finally:
        index.close()


def test_the_next_night_replaces_the_ranges_and_an_unsplit_file_is_still_served(ray_local: Any,
                                                                                tmp_path: Path) -> None:
    publish(tmp_path, "night1", 600, shard_pairs=200)
    cache, keys, scores = publish(tmp_path, "night2", 50, shard_pairs=200)
    assert [Path(f).name for f in cache.files()] == ["part-night2-00000of00001-00000.parquet"]
    old_keys, old_scores = keys_and_scores(30, "old")  # a file written before caches were split
    pq.write_table(pa.table({"key": old_keys, "score": old_scores}), Path(cache.dir) / "part-old-00000.parquet")
    index = ShardedIndex.serve(cache.fs, cache.files(), cache.pairs(), shard_pairs=40)
    try:
        assert len(index.shards) == 2
        found, got = index.lookup(pa.concat_arrays([keys, old_keys]))
        assert found.sum() == 49 + 30
        assert np.array_equal(got[50:], old_scores) and np.array_equal(got[1:50], scores[1:])
    finally:
        index.close()
    empty = ShardedIndex.serve(cache.fs, [], 0, shard_pairs=40)
    assert empty.shards == [] and not empty.lookup(keys)[0].any()


def test_a_cache_on_s3_is_written_by_range_published_and_served(moto: str, ray_local: Any, tmp_path: Path) -> None:
    cache = ScoreCache("s3://score-cache/nightly", CrossEncoderConfig(model="m").model_dump())
    cache.fs = s3(moto, "score-cache")  # (its credentials travel with it to the write tasks and the shards)
    cache, keys, scores = publish(tmp_path, "night1", 300, shard_pairs=100, cache=cache)
    names = [f.rsplit("/", 1)[-1] for f in cache.files()]
    assert len(names) == range_count(300, 100) and all(n.startswith("part-night1-") for n in names)
    assert sorted(cache.fs.ls(cache.dir, detail=False)) == sorted(
        f"{cache.dir}/{n}" for n in [*names, "_settings.json"])  # (the staging is gone)
    index = ShardedIndex.serve(cache.fs, cache.files(), cache.pairs(), shard_pairs=100)
    try:
        found, got = index.lookup(keys)
        assert len(index.shards) == 3 and found.tolist() == [False] + [True] * 299
        assert np.array_equal(got[1:], scores[1:])
    finally:
        index.close()
