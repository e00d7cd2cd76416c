"""Cascades (tiered reranking): stage 2 scores only stage 1's best N per query, and so on.

    checkpoints (stage 1: ids, scores, texts)
      -> StageRanker(1) over whole queries  -> _staging/.../stage1/   (texts only on the top N;
         file by file when no query spans two input files, else map_groups(query_id))
      -> read where stage1_rank <= N -> stage 2 actor pool -> checkpoints: stage2-<fp>/<run id>/ --+
      -> read where it is not --------------------------------------------------------------------+-> union
      -> ... -> map_groups(CascadeRanker)
Each stage has its own model and actor pool (its own resources). Stage 1 is checkpointed
like a plain run; later stages run after it, from the staged ranking. A later stage's
scored pairs are written among the checkpoints as its pool returns them, one file per
block (`StageCheckpoints`); a rerun after a crash serves the complete files of the crashed
attempts to the stage's actors by pair key, ahead of the stage's own score cache (its
model's namespace, when one is given), so it scores only what was not yet durable.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from jobs.cache_shards import Chained, ShardedIndex
from jobs.checkpoints import FileParts, fingerprint
from jobs.config import JobConfig, StageConfig
from jobs.fs import arrow_filesystem
from jobs.ranking import CascadeRanker, StageRanker, advancing, rank_queries
from jobs.ray_runtime import actor_pool_args, actor_pool_deadline, ray_filesystem
from jobs.schema import KEY_PREFIX, QUERY_ID, SCORE, SKIP_REASON, TEXTS, cache_key_column, stage_score
from jobs.stages import Scorer, map_queries, parquet_files, rank_partitions
from reranker_actors.actor import ScoreActor
from reranker_actors.columns import PASSAGE_COLUMNS
from reranker_actors.registry import score_settings


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


@dataclass(frozen=True)
class StageCheckpoints:
    """Where stages 2.. put their scored pairs as the pools return them: under `root` (in
    the run's checkpoints), per stage a directory named by a fingerprint of every stage up
    to it (models, score settings, top_n) and of on_duplicate, and in it one directory per
    attempt (run id)."""

    fs: fsspec.AbstractFileSystem
    root: str
    run_id: str
    shard_pairs: int

    def stage_dir(self, cfg: JobConfig, stage: int) -> str:
        upto: list[StageConfig] = [s for _, s in cfg.stages()[1:stage]]
        settings = {"stages": [(score_settings(s.reranker), s.top_n) for s in upto],
                    "on_duplicate": cfg.input.on_duplicate}
        return posixpath.join(self.root, f"stage{stage}-{fingerprint(settings)}")

    def earlier(self, directory: str) -> tuple[list[str], int]:
        """The complete files other attempts wrote under `directory` (a file torn by a crash
        has no footer), and their rows."""
        files, rows = [], 0
        mine = posixpath.join(directory, self.run_id) + "/"
        for path in (p for p in parquet_files(self.fs, directory) if not p.startswith(mine)):
            try:
                with self.fs.open(path, "rb") as f:
                    rows += pq.ParquetFile(f).metadata.num_rows
                files.append(path)
            except (OSError, pa.ArrowInvalid):
                continue
        return files, rows


def rank_stage_one(table: pa.Table, ranker: StageRanker) -> pa.Table:
    """Stage 1's ranking of the checkpoint rows of whole queries."""
    return ranker(_as_stage1(table))


def rank_cascade(cfg: JobConfig, scored: list[FileParts], staging: str, dest: str, fs: fsspec.AbstractFileSystem,
                 num_pairs: int, by_file: bool, checkpoints: StageCheckpoints,
                 caches: Sequence[Any] | None = None,
                 canaries: Sequence[dict[str, Any] | None] = ()) -> tuple[list[str], list[int]]:
    """Run stages 2.. over the stage-1 checkpoints and write the final ranking to `dest`.
    `scored`: the stage-1 checkpoint files, per input file. by_file: no query spans
    two input files, so stage 1 is ranked file by file.

    `caches`: per stage 2.., the jobs.cache_shards.ShardedIndex its actors
    look pairs up in, or None; `canaries`: per stage 2.., the canaries its actors check.
    Returns, per stage 2.., the directory of the pairs this
    attempt scored (with their keys, and hits from earlier attempts or the cache), and how
    many pairs it took from earlier attempts.
    """
    stages = cfg.stages()
    partitions = rank_partitions(num_pairs)
    filesystem = ray_filesystem(fs)
    scored_dirs: list[str] = []
    resumed: list[int] = []
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
            stage_dir = checkpoints.stage_dir(cfg, i + 1)
            files, rows = checkpoints.earlier(stage_dir)
            passages = cfg.passages is not None
            earlier = ShardedIndex.serve(fs, files, rows, checkpoints.shard_pairs,
                                         (cache_key_column(stage_score(i + 1)), stage_score(i + 1)), passages)
            lookup = Chained([earlier, *([caches[i - 1]] if caches and caches[i - 1] else [])])
            # (max_nan_share 0: a later stage stops at its first NaN score, whose share no gate counts)
            scorer = Scorer(stage_score(i + 1), stage.reranker, stage.actor, lookup,
                            canaries[i - 1] if len(canaries) >= i else None, 0.0, cfg.gates.mode == "warn",
                            passage_columns=passages)
            # (blocks of one batch: each is written, so durable, as the pool returns it)
            advancing = advancing.repartition(target_num_rows_per_block=stage.actor.batch_size)
            advancing = advancing.map_batches(ScoreActor, batch_format="pyarrow", **actor_pool_args(
                stage.actor, scorer.constructor_kwargs(cfg.input.on_invalid, keep_texts=not last)))
            scored_dirs.append(posixpath.join(stage_dir, checkpoints.run_id))
            try:
                resumed.append(earlier.size())  # (distinct pairs: a pair may be in several attempts' files)
                advancing.write_parquet(scored_dirs[-1], filesystem=filesystem)
            finally:
                earlier.close()
            rest = ray.data.read_parquet(ranked_dir, filesystem=filesystem).map_batches(
                _split, batch_format="pyarrow", fn_kwargs=split | {"going_on": False})
            ds = ray.data.read_parquet(scored_dirs[-1], filesystem=filesystem).union(rest).map_batches(
                _conform, batch_format="pyarrow", fn_kwargs={"schema": target})
        models = tuple(s.reranker.model for _, s in stages)
        assert ds is not None
        final = ds.groupby(QUERY_ID, num_partitions=partitions).map_groups(
            rank_queries, batch_format="pyarrow",
            fn_kwargs={"ranker": CascadeRanker(models, cfg.rank.top_k, tuple(cfg.input.extra_columns)
                                               + (PASSAGE_COLUMNS if cfg.passages else ()))})
        final.write_parquet(dest, filesystem=filesystem)
    return scored_dirs, resumed
