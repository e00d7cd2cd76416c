"""Cascades (tiered reranking): stage 2 scores only stage 1's best N per query, and so on.

    checkpoints (stage 1: ids, scores, texts)
      -> StageRanker(1) over whole queries  -> _staging/.../stage1/   (texts only on the top N;
         file by file when no query spans two input files, else map_groups(query_id))
      -> read where stage1_rank <= N -> stage 2 actor pool -> _staging/.../stage2-scored/ --+
      -> read where it is not ----------------------------------------------------------------+-> union
      -> ... -> map_groups(CascadeRanker)
Each stage has its own model and actor pool (its own resources). Stage 1 is checkpointed
like a plain run; later stages run after it, from the staged ranking, and
look their pairs up in their own score cache (their model's namespace) when one is given.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data

from jobs.checkpoints import FileParts
from jobs.config import JobConfig
from jobs.fs import arrow_filesystem
from jobs.ranking import CascadeRanker, StageRanker, advancing, rank_queries
from jobs.ray_runtime import actor_pool_args, actor_pool_deadline, ray_filesystem
from jobs.schema import KEY_PREFIX, QUERY_ID, SCORE, SKIP_REASON, TEXTS, stage_score
from jobs.stages import Scorer, map_queries, rank_partitions
from reranker_actors.actor import ScoreActor


def _as_stage1(batch: pa.Table) -> pa.Table:
    """Checkpoint rows -> the cascade's first-stage rows: valid pairs, `score` as stage1_score."""
    batch = batch.filter(pc.is_null(batch[SKIP_REASON]))
    batch = batch.drop_columns([c for c in batch.column_names if c.startswith(KEY_PREFIX)])
    return batch.rename_columns([stage_score(1) if c == SCORE else c for c in batch.column_names])


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Exactly `schema`'s columns (missing ones null): the two branches of a stage union."""
    return pa.table({f.name: batch[f.name].cast(f.type) if f.name in batch.column_names
                     else pa.nulls(len(batch), f.type) for f in schema})


def _split(batch: pa.Table, stage: int, top_n: int, going_on: bool) -> pa.Table:
    """The rows the next stage scores (rank <= top_n), or the others (null rank included)."""
    on = advancing(batch, stage, top_n)
    return batch.filter(on if going_on else pc.invert(on))


def _schema(fs: fsspec.AbstractFileSystem, directory: str) -> pa.Schema:
    return pads.dataset(directory, filesystem=arrow_filesystem(fs), format="parquet").schema


def rank_stage_one(table: pa.Table, ranker: StageRanker) -> pa.Table:
    """Stage 1's ranking of the checkpoint rows of whole queries."""
    return ranker(_as_stage1(table))


def rank_cascade(cfg: JobConfig, scored: list[FileParts], staging: str, dest: str, fs: fsspec.AbstractFileSystem,
                 num_pairs: int, by_file: bool, caches: Sequence[Any] | None = None) -> list[str]:
    """Run stages 2.. over the stage-1 checkpoints and write the final ranking to `dest`.
    `scored`: the stage-1 checkpoint files, per input file. by_file: no query spans
    two input files, so stage 1 is ranked file by file.

    `caches`: per stage 2.., an ObjectRef of the jobs.score_cache.CacheIndex its actors
    look pairs up in, or None. Returns, per stage 2.., the directory of the pairs it
    scored (with their cache keys and hits when cached).
    """
    stages = cfg.stages()
    partitions = rank_partitions(num_pairs)
    filesystem = ray_filesystem(fs)
    scored_dirs: list[str] = []
    ds: ray.data.Dataset | None = None  # stage i's pairs, for i > 1
    with actor_pool_deadline([s.actor for _, s in stages[1:]]):
        for i, (_, stage) in enumerate(stages[1:], start=1):
            ranked_dir = posixpath.join(staging, f"stage{i}")
            ranker = StageRanker(i, stage.top_n, cfg.input.on_duplicate)
            if i == 1:
                map_queries(scored, rank_stage_one, {"ranker": ranker}, ranked_dir, fs, num_pairs, by_file)
            else:
                assert ds is not None
                ds.groupby(QUERY_ID, num_partitions=partitions).map_groups(
                    rank_queries, batch_format="pyarrow", fn_kwargs={"ranker": ranker},
                ).write_parquet(ranked_dir, filesystem=filesystem)
            schema = _schema(fs, ranked_dir)
            last = i == len(stages) - 1
            keep = [f for f in schema if f.name not in TEXTS or not last]
            target = pa.schema([*keep, pa.field(stage_score(i + 1), pa.float32())])
            split = {"stage": i, "top_n": stage.top_n}
            advancing = ray.data.read_parquet(ranked_dir, filesystem=filesystem).map_batches(
                _split, batch_format="pyarrow", fn_kwargs=split | {"going_on": True})
            scorer = Scorer(stage_score(i + 1), stage.reranker, stage.actor, caches[i - 1] if caches else None)
            advancing = advancing.map_batches(ScoreActor, batch_format="pyarrow", **actor_pool_args(
                stage.actor, scorer.constructor_kwargs(cfg.input.on_invalid, keep_texts=not last)))
            scored_dirs.append(posixpath.join(staging, f"stage{i + 1}-scored"))
            advancing.write_parquet(scored_dirs[-1], filesystem=filesystem)
            rest = ray.data.read_parquet(ranked_dir, filesystem=filesystem).map_batches(
                _split, batch_format="pyarrow", fn_kwargs=split | {"going_on": False})
            ds = ray.data.read_parquet(scored_dirs[-1], filesystem=filesystem).union(rest).map_batches(
                _conform, batch_format="pyarrow", fn_kwargs={"schema": target})
        models = tuple(s.reranker.model for _, s in stages)
        assert ds is not None
        final = ds.groupby(QUERY_ID, num_partitions=partitions).map_groups(
            rank_queries, batch_format="pyarrow",
            fn_kwargs={"ranker": CascadeRanker(models, cfg.rank.top_k, tuple(cfg.input.extra_columns))})
        final.write_parquet(dest, filesystem=filesystem)
    return scored_dirs
