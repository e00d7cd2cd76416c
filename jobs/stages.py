"""The Ray Data pipelines of a rerank job, and the counts read back from what they wrote.

score:  UnitDatasource (the row ranges without a checkpoint, in units of about one batch)
        -> Normalizer (tasks) -> blocks of exactly one batch -> ScoreActor (actor pool) ->
        driver: RowAssembler -> PartWriter (complete input rows, within a second of leaving
        the pool, one part per input file)
rank:   checkpoints -> drop skipped -> Ranker over whole queries -> ranked staging: whole
        input files packed into tasks when no query spans two input files, else one task for
        up to a million pairs, else map_groups(query_id) after a shuffle
quarantine: checkpoints -> skipped rows with their reason and input file
Checkpoints hold ids, scores and pass-through columns (no texts), so the driver and
the shuffle that gathers each query's candidates move little data.
"""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from jobs.checkpoints import Checkpoints, FileParts, PartEntry, PartWriter, RowAssembler, shard_id
from jobs.config import ActorConfig, InputConfig, JobConfig
from jobs.fs import arrow_filesystem
from jobs.inputs import PATH_COLUMN, Inputs
from jobs.normalize import Normalizer, TextCheck
from jobs.ranking import Ranker
from jobs.ray_runtime import actor_pool_args, actor_pool_deadline, ray_filesystem
from jobs.schema import BATCH_END, BATCH_START, QUERY_ID, RANK, ROW, SHARD, SKIP_REASON
from jobs.text_join import join_texts
from jobs.units import Unit, UnitDatasource, plan_units
from reranker_actors.actor import ScoreActor
from reranker_actors.base import RerankerConfig
from reranker_actors.columns import PASSAGE_COLUMNS

ROWS_PER_RANK_PARTITION = 1_000_000  # pairs per partition of a groupby(query_id) shuffle


def rank_partitions(pairs: int) -> int:
    """Partitions of a groupby(query_id) over `pairs` rows."""
    return max(1, math.ceil(pairs / ROWS_PER_RANK_PARTITION))


@dataclass(frozen=True)
class Scored:
    """What the score stage left in the checkpoints, one manifest entry per part."""

    entries: list[PartEntry]  # in input file order, then row order
    resumed: int  # pairs an earlier run checkpointed
    scored_now: int  # pairs this run sent through the model
    startup_s: float = 0.0  # stage start -> an actor starts its first batch (scheduling, model load)
    steady_pairs_per_s: float = 0.0  # pairs/s from then to the end of the last batch

    @property
    def pairs(self) -> int:
        return sum(e.rows for e in self.entries)

    @property
    def skipped(self) -> int:
        return sum(e.skipped for e in self.entries)

    @property
    def scored(self) -> int:
        return self.pairs - self.skipped

    @property
    def truncated(self) -> int:
        return sum(e.truncated for e in self.entries)

    @property
    def cached(self) -> int:
        return sum(e.cached for e in self.entries)

    @property
    def passages(self) -> int:
        return sum(e.passages for e in self.entries)

    @property
    def capped(self) -> int:
        return sum(e.capped for e in self.entries)

    @property
    def dtypes(self) -> list[str]:
        return sorted({d for e in self.entries for d in e.dtypes})

    @property
    def attention(self) -> list[str]:
        return sorted({a for e in self.entries for a in e.attention})


@dataclass(frozen=True)
class Scorer:
    """One actor-pool stage of the score pipeline: a model, its pool, and its score column."""

    column: str  # `score`, or a teacher's own column
    reranker: RerankerConfig
    actor: ActorConfig
    cache: Any = None  # the jobs.cache_shards.ShardedIndex to look pairs up in, or None
    canaries: dict[str, Any] | None = None  # reranker_actors.canaries.Canaries' fields, checked at start
    max_nan_share: float = 0.0  # gates.max_nan_share
    gates_warn: bool = False  # gates.mode warn: a moved canary or a NaN score is reported, not fatal
    passage_columns: bool = False  # add passages, best_passage, best_passage_chars (the rerank job's scorer)

    def constructor_kwargs(self, on_invalid: str, keep_texts: bool) -> dict[str, Any]:
        return {"reranker": self.reranker.model_dump(), "expect_gpu": self.actor.num_gpus > 0,
                "threads": self.actor.threads or max(1, round(self.actor.num_cpus)), "on_invalid": on_invalid,
                "score_column": self.column, "keep_texts": keep_texts, "cache": self.cache,
                "max_restarts": self.actor.max_restarts, "canaries": self.canaries,
                "max_nan_share": self.max_nan_share, "gates_warn": self.gates_warn,
                "passage_columns": self.passage_columns}


def score_pairs(inputs: Inputs, input_cfg: InputConfig, scorers: list[Scorer], checkpoints: Checkpoints,
                keep_texts: bool = False) -> Scored:
    """Score every input row no checkpoint holds yet, checkpointing as units complete.

    The input is read in units of about one actor batch (jobs.units); the scorers run one
    after the other on each block (each its own actor pool); the last drops the texts
    unless `keep_texts` (a later stage or the labels need them).
    """
    sids = [shard_id(inputs.fs, f) for f in inputs.files]
    earlier = checkpoints.load(sids)
    index = {sid: i for i, sid in enumerate(sids)}
    batch_pairs = min(s.actor.batch_size for s in scorers)
    units = plan_units(inputs.files, done_ranges(earlier, index), batch_pairs)
    earlier = [e.counts() for e in earlier]  # (planned: their ranges are not needed again)
    writer = PartWriter(checkpoints, inputs.files, sids)
    window = ActorWindow(time.time())
    # (a dataset keeps the DataContext of its creation)
    with writer, actor_pool_deadline([s.actor for s in scorers]) if units else nullcontext():
        if units:
            ds = read_pairs(inputs, input_cfg, units)
            # Blocks of exactly one batch, so that each actor task is one call and its rows
            # leave the pool (and become durable) as that call returns, not with the next one.
            ds = ds.repartition(target_num_rows_per_block=batch_pairs, strict=True)
            for i, scorer in enumerate(scorers):
                keep = keep_texts or i < len(scorers) - 1
                ds = ds.map_batches(ScoreActor, batch_format="pyarrow", **actor_pool_args(
                    scorer.actor, scorer.constructor_kwargs(input_cfg.on_invalid, keep)))
            assembler = RowAssembler(units, inputs.files)
            # prefetch_batches=0: with prefetching, Ray Data hands a block over only once the
            # next one has arrived, a whole batch time later.
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
                window.add(batch)
                for file, ranges, table in assembler.add(batch):
                    writer.add(file, ranges, table)
            assembler.check_complete()
    entries = sorted(earlier + writer.written, key=lambda e: (index[e.sid], e.first))
    scored_now = sum(e.rows - e.skipped - e.cached for e in writer.written)
    return Scored(entries, sum(e.rows for e in earlier), scored_now, round(window.startup_s, 3),
                  round(window.pairs_per_s(scored_now), 2))


def read_pairs(inputs: Inputs, input_cfg: InputConfig, units: list[Unit]) -> ray.data.Dataset:
    """The pairs of `units`, normalized and (the run layout) joined with their texts and checked."""
    source = UnitDatasource(inputs.fs, inputs.files, units, inputs.columns)
    # (one block per read task, not split further: Normalizer fuses into the read)
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_tasks())
    ds = ds.map_batches(Normalizer(input_cfg), batch_format="pyarrow", batch_size=None)
    if inputs.texts:  # (the run layout: ids, joined here with the corpus and queries)
        ds = join_texts(ds, inputs.texts, sum(u.num_rows for u in units), normalized_schema(inputs, input_cfg))
        ds = ds.map_batches(TextCheck(input_cfg.on_invalid), batch_format="pyarrow", batch_size=None)
    return ds


def done_ranges(entries: list[PartEntry], index: dict[str, int]) -> dict[int, np.ndarray]:
    """The input rows `entries` hold, per input file index."""
    held: dict[int, list[np.ndarray]] = {}
    for entry in entries:
        held.setdefault(index[entry.sid], []).append(entry.row_ranges())
    return {file: np.concatenate(ranges) for file, ranges in held.items()}


def normalized_schema(inputs: Inputs, cfg: InputConfig) -> pa.Schema:
    """The schema of the pairs the Normalizer makes of the input files' rows (from the first
    file's footer and an empty table)."""
    with inputs.fs.open(inputs.files[0].path, "rb") as f:
        empty = pq.ParquetFile(f).schema_arrow.empty_table().select(inputs.columns)
    for name, kind in ((SHARD, pa.int32()), (ROW, pa.int64()), (PATH_COLUMN, pa.string())):
        empty = empty.append_column(name, pa.array([], kind))
    return Normalizer(cfg)(empty).schema


@dataclass
class ActorWindow:
    """When the actors worked, from the start and end times they put on each batch:
    start-up is the stage's start until the first batch began (actors scheduled, models
    loaded); the steady rate counts pairs from then until the last batch ended."""

    stage_start: float
    first_start: float = math.inf
    last_end: float = -math.inf

    def add(self, batch: pa.Table) -> None:
        start, end = pc.min(batch[BATCH_START]).as_py(), pc.max(batch[BATCH_END]).as_py()
        if start is not None:
            self.first_start, self.last_end = min(self.first_start, start), max(self.last_end, end)

    @property
    def startup_s(self) -> float:
        return max(0.0, self.first_start - self.stage_start) if self.last_end > -math.inf else 0.0

    def pairs_per_s(self, pairs: int) -> float:
        busy = self.last_end - self.first_start
        return pairs / busy if busy > 0 else 0.0


def map_queries(shards: list[FileParts], fn: Callable[..., pa.Table], fn_kwargs: dict[str, Any], dest: str,
                fs: fsspec.AbstractFileSystem, pairs: int, by_file: bool) -> None:
    """Apply `fn`, which takes whole queries (any number of them), to the rows of the
    checkpoint files `shards` (per input file), and write what it returns under `dest`.

    by_file: no query has rows in two input files (Checkpoints.queries_disjoint), so whole
    input files go to tasks: consecutive files together, up to ROWS_PER_RANK_PARTITION
    pairs a task and at least as many tasks as the cluster has CPUs. Otherwise each query's
    rows must be gathered from every file first: with up to ROWS_PER_RANK_PARTITION pairs
    in all, one task reads them all; with more, Ray Data's groupby(query_id) shuffles them
    across the cluster into partitions.
    """
    files = [f for group in shards for f in group.files]
    if by_file or rank_partitions(pairs) == 1:
        groups = _tasks(shards) if by_file else [files]
        ray.get([_map_files.remote(group, fn, fn_kwargs, posixpath.join(dest, f"part-{i:05d}.parquet"), fs)
                 for i, group in enumerate(groups)])
        return
    ds = ray.data.read_parquet(files, filesystem=ray_filesystem(fs))
    ds = ds.groupby(QUERY_ID, num_partitions=rank_partitions(pairs)).map_groups(
        fn, batch_format="pyarrow", fn_kwargs=fn_kwargs)
    ds.write_parquet(dest, filesystem=ray_filesystem(fs))


def _tasks(shards: list[FileParts]) -> list[list[str]]:
    """Consecutive input files' parts, packed into tasks (see map_queries)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    target = min(ROWS_PER_RANK_PARTITION, math.ceil(sum(g.pairs for g in shards) / cpus))
    tasks: list[list[str]] = []
    pairs = 0
    for group in shards:
        if not tasks or pairs + group.pairs > target:
            tasks.append([])
            pairs = 0
        tasks[-1] += group.files
        pairs += group.pairs
    return tasks


@ray.remote
def _map_files(paths: list[str], fn: Callable[..., pa.Table], fn_kwargs: dict[str, Any], dest: str,
               fs: fsspec.AbstractFileSystem) -> int:
    tables = []
    for path in paths:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    out = fn(pa.concat_tables(tables, promote_options="permissive"), **fn_kwargs)
    if len(out):
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        with fs.open(dest, "wb") as f:
            pq.write_table(out, f)
    return len(out)


def rank_valid(table: pa.Table, ranker: Ranker) -> pa.Table:
    """The ranking of the scored pairs of whole queries (pairs with a skip reason left out)."""
    return ranker(table.filter(pc.is_null(table[SKIP_REASON])).drop_columns([SKIP_REASON]))


def rank_pairs(cfg: JobConfig, scored: list[FileParts], dest: str, fs: fsspec.AbstractFileSystem,
               num_pairs: int, by_file: bool) -> None:
    ranker = Ranker(
        model=cfg.reranker.model, top_k=cfg.rank.top_k, on_duplicate=cfg.input.on_duplicate,
        extra_columns=tuple(cfg.input.extra_columns) + (PASSAGE_COLUMNS if cfg.passages else ()),
    )
    map_queries(scored, rank_valid, {"ranker": ranker}, dest, fs, num_pairs, by_file)


def parquet_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    return sorted(p for p in fs.find(directory) if p.endswith(".parquet")) if fs.exists(directory) else []


def footers(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[pq.FileMetaData]:
    out = []
    for path in files:
        with fs.open(path, "rb") as f:
            out.append(pq.ParquetFile(f).metadata)
    return out


def footer_rows(fs: fsspec.AbstractFileSystem, files: list[str]) -> int:
    return sum(meta.num_rows for meta in footers(fs, files))


def count_queries(fs: fsspec.AbstractFileSystem, files: list[str]) -> int:
    """Distinct queries in ranked output: every query has exactly one rank-1 row."""
    if not files:
        return 0
    data = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet")
    return data.count_rows(filter=pc.field(RANK) == 1)
