"""The score cache without Ray: keys, lookups, namespaces, publishing."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.config import CacheConfig
from jobs.score_cache import KEY_TYPE, CacheIndex, RunCaches, ScoreCache, namespace, pair_keys
from reranker_actors.cross_encoder import CrossEncoderConfig
from reranker_actors.llm_yes_no import LLMYesNoConfig


def test_a_key_changes_with_every_part_and_only_with_them() -> None:
    base = pair_keys("float32", ["q"], ["d"], ["i"])[0]
    assert pair_keys("float32", ["q"], ["d"], ["i"])[0] == base
    changed = [pair_keys("bfloat16", ["q"], ["d"], ["i"]), pair_keys("float32", ["q2"], ["d"], ["i"]),
               pair_keys("float32", ["q"], ["d "], ["i"]), pair_keys("float32", ["q"], ["d"], ["j"]),
               pair_keys("float32", ["qd"], [""], ["i"]), pair_keys("float32", ["q"], ["d"], None)]
    assert len({base.as_py(), *(k[0].as_py() for k in changed)}) == 7  # (length-prefixed: "q"+"d" != "qd"+"")
    assert pair_keys("float32", ["q"], ["d"], [None])[0] == pair_keys("float32", ["q"], ["d"], [""])[0]
    assert pair_keys("float32", ["问题"], ["文档"]).type == KEY_TYPE


def test_lookup_finds_exactly_the_stored_keys_with_their_scores() -> None:
    rng = np.random.default_rng(0)
    docs = [f"doc {i}" for i in range(500)]
    keys = pair_keys("float32", ["q"] * 500, docs)
    scores = rng.normal(size=500).astype(np.float32)
    stored = rng.permutation(500)[:300]
    index = CacheIndex.from_table(pa.table({"key": keys.take(pa.array(stored)), "score": scores[stored]}))
    found, got = index.lookup(keys)
    assert set(np.flatnonzero(found)) == set(stored.tolist())
    np.testing.assert_array_equal(got[found], scores[found])
    sliced = keys.slice(100, 50)  # (an offset into the key buffer)
    found_sliced, got_sliced = index.lookup(sliced)
    np.testing.assert_array_equal(found_sliced, found[100:150])
    np.testing.assert_array_equal(got_sliced, got[100:150])


def test_keys_sharing_their_first_half_are_told_apart() -> None:
    hi = b"\x01" * 8
    keys = pa.array([hi + b"\x02" * 8, hi + b"\x03" * 8, hi + b"\x04" * 8], KEY_TYPE)
    index = CacheIndex.from_table(pa.table({"key": keys.take(pa.array([2, 0])), "score": pa.array([4.0, 2.0])}))
    found, got = index.lookup(keys)
    assert found.tolist() == [True, False, True] and got.tolist() == [2.0, 0.0, 4.0]
    assert not CacheIndex.from_table(pa.table({"key": pa.array([], KEY_TYPE), "score": pa.array([])})).lookup(
        keys)[0].any()


def test_the_namespace_follows_what_the_score_depends_on() -> None:
    base = CrossEncoderConfig(model="m").model_dump()
    same = [CrossEncoderConfig(model="m", max_tokens_per_batch=999).model_dump(),
            CrossEncoderConfig(model="m", compile=True).model_dump(),
            CrossEncoderConfig(model="m", dtype="bf16").model_dump()]  # (the resolved dtype is in each key)
    other = [CrossEncoderConfig(model="m2").model_dump(), CrossEncoderConfig(model="m", revision="v2").model_dump(),
             CrossEncoderConfig(model="m", max_length=256).model_dump(),
             CrossEncoderConfig(model="m", activation="sigmoid").model_dump(),
             LLMYesNoConfig(model="m").model_dump(), LLMYesNoConfig(model="m", instruction="legal").model_dump(),
             LLMYesNoConfig(model="m", suffix="<|im_end|>\n").model_dump()]
    assert {namespace(c) for c in same} == {namespace(base)}
    assert len({namespace(base), *(namespace(c) for c in other)}) == 1 + len(other)


def stage(cache: ScoreCache, run: str, n: int, name: str = "a") -> None:
    """What write_cache leaves for `publish`: n (key, score) rows in the run's staging."""
    staging = Path(cache.staging(run))
    staging.mkdir(parents=True, exist_ok=True)
    keys = pair_keys("float32", ["q"] * n, [f"{run}-{name}-{i}" for i in range(n)])
    pq.write_table(pa.table({"key": keys, "score": pa.array(np.arange(n), pa.float32())}), staging / f"{name}.parquet")


def test_publish_replaces_the_previous_runs_files(tmp_path: Path) -> None:
    cache = ScoreCache(str(tmp_path / "cache"), CrossEncoderConfig(model="m").model_dump())
    fs = fsspec.filesystem("file")
    for run, n in (("r1", 3), ("r2", 2)):
        stage(cache, run, n)
        assert cache.publish(run) == 1
    assert [Path(f).name for f in cache.files()] == ["part-r2-00000.parquet"]
    assert cache.pairs() == 2 and (Path(cache.dir) / "_settings.json").exists()
    assert not fs.exists(cache.staging("r2"))


def test_scorers_with_the_same_settings_share_one_cache_published_once(tmp_path: Path) -> None:
    same, other = CrossEncoderConfig(model="m").model_dump(), CrossEncoderConfig(model="m2").model_dump()
    caches = RunCaches(CacheConfig(path=str(tmp_path / "cache")), [same, other, same])
    assert caches.of[0] is caches.of[2] and len(caches.unique) == 2
    stage(caches.of[0], "r1", 3, "stage1")  # (both scorers that share it stage their rows)
    stage(caches.of[2], "r1", 2, "stage3")
    stage(caches.of[1], "r1", 4)
    caches.publish("r1")
    assert [c.pairs() for c in caches.of] == [5, 4, 5]  # (publishing it twice would empty it)
    assert not RunCaches(CacheConfig(), [same, other]) and RunCaches(CacheConfig(), [same]).unique == []
