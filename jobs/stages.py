"""The Ray Data pipelines of a rerank job, and the counts read back from what they wrote.

score:  read_parquet -> Normalizer (tasks) -> ScoreActor (actor pool) -> scored staging
rank:   scored staging -> drop skipped -> map_groups(query_id, Ranker) -> ranked staging
The scored staging holds ids, scores and pass-through columns (no texts), so the
shuffle that gathers each query's candidates moves little data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from jobs.config import JobConfig
from jobs.fs import arrow_filesystem
from jobs.inputs import Inputs
from jobs.normalize import PATH_COLUMN, Normalizer
from jobs.ranking import Ranker, rank_queries
from jobs.ray_runtime import actor_pool_args, actor_pool_deadline, ray_filesystem
from jobs.schema import DTYPE, QUERY_ID, RANK, SCORE, SKIP_REASON
from reranker_actors.actor import ScoreActor

ROWS_PER_RANK_PARTITION = 1_000_000


def score_pairs(inputs: Inputs, cfg: JobConfig, dest: str, fs: fsspec.AbstractFileSystem) -> None:
    threads = cfg.actor.threads or max(1, round(cfg.actor.num_cpus))
    with actor_pool_deadline(cfg.actor):  # (a dataset keeps the DataContext of its creation)
        ds = ray.data.read_parquet(
            inputs.paths, filesystem=ray_filesystem(inputs.fs), columns=inputs.columns,
            include_paths=PATH_COLUMN not in inputs.columns,
        )
        ds = ds.map_batches(Normalizer(cfg.input), batch_format="pyarrow")
        ds = ds.map_batches(
            ScoreActor, batch_format="pyarrow",
            **actor_pool_args(cfg.actor, {
                "reranker": cfg.reranker.model_dump(), "expect_gpu": cfg.actor.num_gpus > 0,
                "threads": threads,
            }),
        )
        ds.write_parquet(dest, filesystem=ray_filesystem(fs))


def _drop_skipped(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch[SKIP_REASON])).drop_columns([SKIP_REASON, DTYPE])


def rank_pairs(cfg: JobConfig, scored: str, dest: str, fs: fsspec.AbstractFileSystem,
               num_pairs: int) -> None:
    ranker = Ranker(
        model=cfg.reranker.model, top_k=cfg.rank.top_k, on_duplicate=cfg.input.on_duplicate,
        extra_columns=tuple(cfg.input.extra_columns),
    )
    partitions = max(1, math.ceil(num_pairs / ROWS_PER_RANK_PARTITION))
    ds = ray.data.read_parquet(scored, filesystem=ray_filesystem(fs))
    ds = ds.map_batches(_drop_skipped, batch_format="pyarrow")
    ds = ds.groupby(QUERY_ID, num_partitions=partitions).map_groups(
        rank_queries, batch_format="pyarrow", fn_kwargs={"ranker": ranker}
    )
    ds.write_parquet(dest, filesystem=ray_filesystem(fs))


@dataclass(frozen=True)
class ScoredCounts:
    pairs: int  # all pairs read (after exploding nested rows)
    skipped: int  # invalid pairs dropped under on_invalid: skip
    dtypes: tuple[str, ...]  # the dtypes the actors resolved

    @property
    def scored(self) -> int:
        return self.pairs - self.skipped


def parquet_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    return sorted(p for p in fs.find(directory) if p.endswith(".parquet")) if fs.exists(directory) else []


def footers(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[pq.FileMetaData]:
    out = []
    for path in files:
        with fs.open(path, "rb") as f:
            out.append(pq.ParquetFile(f).metadata)
    return out


def _column_stats(meta: pq.FileMetaData, name: str) -> list[pq.Statistics]:
    col = meta.schema.names.index(name)
    stats = [meta.row_group(i).column(col).statistics for i in range(meta.num_row_groups)]
    if any(s is None or not s.has_null_count for s in stats):
        raise RuntimeError(f"Parquet written without statistics for column {name!r}")
    return stats


def count_scored(fs: fsspec.AbstractFileSystem, directory: str) -> ScoredCounts:
    """Counts from the scored staging's footers: rows, null scores (= skipped), and the
    dtypes actors used (min/max statistics of the constant-per-batch `_dtype` column)."""
    pairs = skipped = 0
    dtypes: set[str] = set()
    for meta in footers(fs, parquet_files(fs, directory)):
        pairs += meta.num_rows
        skipped += sum(s.null_count for s in _column_stats(meta, SCORE))
        dtypes |= {v for s in _column_stats(meta, DTYPE) if s.has_min_max for v in (s.min, s.max)}
    return ScoredCounts(pairs, skipped, tuple(sorted(dtypes)))


def footer_rows(fs: fsspec.AbstractFileSystem, files: list[str]) -> int:
    return sum(meta.num_rows for meta in footers(fs, files))


def count_queries(fs: fsspec.AbstractFileSystem, files: list[str]) -> int:
    """Distinct queries in ranked output: every query has exactly one rank-1 row."""
    if not files:
        return 0
    data = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet")
    return data.count_rows(filter=pc.field(RANK) == 1)
