"""Rerank query-candidate pairs: Parquet in, Ray Data actor pool, ranked Parquet out.

    python -m jobs.rerank --config configs/demo.yaml [key.sub=value ...]
    ray job submit --working-dir . -- python -m jobs.rerank --config <yaml> [key.sub=value ...]

Recipe: read (footers) -> validate -> score (checkpointed per input file; pairs found in
the score cache, `cache.path`, skip the model) -> rank (or a cascade: rerank each stage's
top N on its own pool, then rank) -> quarantine -> report -> commit (_SUCCESS last).
A rerun of a crashed run resumes.
With no cluster address (ray.address / RAY_ADDRESS) the job starts a local Ray.
"""

from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from jobs.cascade import StageCheckpoints, rank_cascade
from jobs.cli import run_cli
from jobs.config import ActorConfig, JobConfig, load_config, reading_input, title_apart
from jobs.errors import ConfigError
from jobs.evaluate import Run as Ranking
from jobs.evaluate import evaluate, mean, read_run
from jobs.fs import arrow_filesystem
from jobs.gates import (
    GateResults,
    baseline_stats,
    buckets_for,
    check_drift_config,
    drift_gates,
    eval_gates,
    gather_drift,
    health_gates,
    nan_and_truncation,
    submit_drift,
    submit_stats,
)
from jobs.lifecycle import Job, Produced, Run, run_job
from jobs.output import TREC_RUN, OutputError
from jobs.report_gates import gates_figure
from jobs.report_html import ScoreSeries, render_report, sample_rows
from jobs.schema import DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE, QUERY_ID, RANK, SCORE, stage_rank, stage_score
from jobs.score_cache import cache_hits
from jobs.stages import Scored, Scorer, count_queries, footer_rows, parquet_files, rank_pairs
from jobs.summary import RunSummary
from jobs.trec_run import write_trec
from reranker_actors.base import RerankerConfig
from reranker_actors.registry import score_settings


@dataclass
class Ranked(Produced):
    files: list[str] = field(default_factory=list)  # the ranked part files, staged
    rows_out: int = 0
    queries: int = 0
    stage_dirs: list[str] = field(default_factory=list)  # cascade: per stage 2.., the pairs it scored
    stage_cached: list[int] = field(default_factory=list)  # cascade: per stage, pairs from the score cache
    stage_resumed: list[int] = field(default_factory=list)  # cascade: per stage, pairs an earlier attempt scored


class RerankJob(Job[Ranked]):
    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = self.config = cfg
        self.input, self.output_path, self.cache = reading_input(cfg.input, cfg.passages), cfg.output.path, cfg.cache
        self.title_apart = title_apart(cfg.input, cfg.passages)
        self.ray, self.qrels_path = cfg.ray, cfg.eval.qrels
        self.keep_texts = bool(cfg.cascade)
        self.gates = cfg.gates
        self.passage_columns = cfg.passages is not None

    def rerankers(self) -> list[RerankerConfig]:
        return [stage.reranker for _, stage in self.cfg.stages()]

    def pools(self) -> list[list[ActorConfig]]:
        return [[self.cfg.actor], [stage.actor for stage in self.cfg.cascade]]  # (stages 2.. run together)

    def scorers(self, run: Run) -> list[Scorer]:
        canaries = self.canary(run, self.score_columns()[0])
        return [Scorer(SCORE, self.cfg.reranker, self.cfg.actor, run.lookups[0], canaries, self.gates.max_nan_share,
                       self.gates.mode == "warn", passage_columns=self.passage_columns)]

    def score_columns(self) -> list[str]:
        """`score` for one stage; a cascade's canaries name each stage (stage<i>_score)."""
        return [stage_score(i) for i in range(1, len(self.cfg.cascade) + 2)] if self.cfg.cascade else [SCORE]

    def open_gates(self, run: Run) -> None:
        super().open_gates(run)
        if self.gates.min_ratio_to_first_stage is not None and not (run.input.columns.score or run.input.columns.rank):
            raise ConfigError("gates.min_ratio_to_first_stage: needs the first stage's ranking, and input.path "
                              f"{self.input.path!r} has none: set input.columns.score or input.columns.rank")
        check_drift_config(self.gates)

    def check_gates(self, run: Run, scored: Scored, produced: Ranked,
                    per_query: dict[str, dict[str, dict[str, float]]], non_finite: int) -> GateResults:
        cfg, gates = self.cfg, self.gates
        columns = [SCORE, *(self.score_columns() if cfg.cascade else [])]
        buckets = buckets_for(produced.rows_out) if gates.baseline else 0
        # (this run's reads, the baseline's and the drift join all submitted before waiting on any)
        pending = submit_stats(run.out.fs, produced.files, columns, SCORE, cfg.eval.k, buckets)
        base = baseline_stats(gates, cfg.eval.k, buckets) if gates.baseline else None
        drift = submit_drift(cfg.eval.k, pending.parts, base.parts) if base else None
        stats = pending.result()
        results = GateResults(gates.mode)
        nan_and_truncation(results, gates, non_finite, scored.scored, scored.truncated)
        health_gates(results, stats, SCORE, gates)
        for i, column in enumerate(columns[1:], start=1):  # (a cascade's stages: reported)
            health_gates(results, stats, column, gates, f"stage {i}", gated=False)
        if per_query:
            eval_gates(results, gates, {stage: mean(pq) for stage, pq in per_query.items()}, cfg.eval.k)
        if base is not None and drift is not None:
            drift_gates(results, gates, stats, base.result(), gather_drift(drift))
        return results

    def checkpoint_settings(self) -> dict[str, Any]:
        inputs = self.cfg.input.model_dump(exclude={"path", "on_duplicate"})  # (on_duplicate acts after scoring)
        return {"reranker": score_settings(self.cfg.reranker), "input": inputs, "texts kept": self.keep_texts,
                "cache keys": self.cache.path is not None}

    def produce(self, run: Run, scored: Scored, shards: list[str]) -> Ranked:
        cfg, out = self.cfg, run.out
        ranked = Ranked(out.staging("ranked"), cache_rows=[(0, shards, SCORE)])
        with run.clock.stage("cascade + rank" if cfg.cascade else "rank"):
            if cfg.cascade:
                resume = StageCheckpoints(out.fs, posixpath.join(run.checkpoints.root, "cascade"), out.run_id,
                                          cfg.cache.shard_pairs)
                ranked.stage_dirs, resumed = rank_cascade(
                    cfg, run.groups, out.staging("cascade"), ranked.staged, out.fs, scored.scored, run.by_file,
                    resume, run.lookups[1:], [self.canary(run, c) for c in self.score_columns()[1:]])
                ranked.stage_resumed = [scored.resumed, *resumed]
            else:
                rank_pairs(cfg, run.groups, ranked.staged, out.fs, scored.scored, run.by_file)
        ranked.files = parquet_files(out.fs, ranked.staged)
        ranked.rows_out = footer_rows(out.fs, ranked.files)
        self._check_ranked(scored, ranked.rows_out)
        if cfg.output.trec:
            with run.clock.stage("trec"):
                ranked.side[TREC_RUN] = out.staging(TREC_RUN)
                ray.get(_write_trec.remote(out.fs, ranked.files, ranked.side[TREC_RUN], cfg.output.trec_tag))
        ranked.queries = count_queries(out.fs, ranked.files)
        stage_files = [parquet_files(out.fs, d) for d in ranked.stage_dirs]
        ranked.cache_rows += [(i - 1, files, stage_score(i)) for i, files in enumerate(stage_files, start=2)]
        hits = [cache_hits(out.fs, files, stage_score(i)) for i, files in enumerate(stage_files, start=2)]
        ranked.stage_cached = [scored.cached, *(h - r for h, r in zip(hits, ranked.stage_resumed[1:], strict=True))]
        return ranked

    def _check_ranked(self, scored: Scored, rows_out: int) -> None:
        """The rank stage's files are written by workers: the driver must see all of them."""
        complete = self.cfg.rank.top_k is None and self.cfg.input.on_duplicate == "error"
        if rows_out == 0 or (complete and rows_out != scored.scored):
            raise OutputError(
                f"the rank stage wrote {rows_out} rows for {scored.scored} scored pairs: output.path "
                f"{self.cfg.output.path!r} must be visible to every node of the cluster (s3:// or a shared "
                "filesystem), not a node-local path"
            )

    def evaluate(self, run: Run, shards: list[str], produced: Ranked) -> dict[str, dict[str, dict[str, float]]]:
        """The first stage on all scored pairs (before top_k), each cascade stage but the last
        (on the rows the output keeps), and the final ranking."""
        assert run.qrels is not None
        fs, judged, c = run.out.fs, set(run.qrels), run.input.columns
        runs: dict[str, Ranking] = {}
        first = FIRST_STAGE_RANK if c.rank else FIRST_STAGE_SCORE if c.score else None
        if first:
            runs["first stage"] = read_run(fs, shards, judged, first, where_valid=SCORE)
        for i in range(1, len(self.cfg.cascade) + 1):
            runs[f"stage {i}"] = read_run(fs, produced.files, judged, stage_rank(i))
        runs["reranked"] = read_run(fs, produced.files, judged, RANK)
        return {stage: evaluate(r, run.qrels, self.cfg.eval.k) for stage, r in runs.items()}

    def summary_fields(self, run: Run, scored: Scored, produced: Ranked) -> dict[str, Any]:
        cfg, caches = self.cfg, run.caches
        return dict(queries=produced.queries, rows_out=produced.rows_out, files_out=len(produced.files),
                    model=cfg.reranker.model, revision=cfg.reranker.revision, backend=cfg.reranker.backend,
                    cache=caches.of[0].url if caches else None,
                    cache_entries=caches.entries[caches.of[0].namespace] if caches else 0,
                    stages=self._stage_counts(run, produced))

    def _stage_counts(self, run: Run, produced: Ranked) -> list[dict]:
        """Per cascade stage: its model, how many output rows it scored, and how many of its
        pairs came from the score cache."""
        if not self.cfg.cascade:
            return []
        data = pads.dataset(produced.files, filesystem=arrow_filesystem(run.out.fs), format="parquet")
        return [{"stage": i, "model": stage.reranker.model, "backend": stage.reranker.backend,
                 "top_n": stage.top_n or None, "pairs": data.count_rows(filter=pc.field(stage_score(i)).is_valid()),
                 "cached": produced.stage_cached[i - 1], "resumed": produced.stage_resumed[i - 1]}
                for i, (_, stage) in enumerate(self.cfg.stages(), start=1)]

    def report(self, run: Run, produced: Ranked, summary: RunSummary,
               per_query: dict[str, dict[str, dict[str, float]]]) -> str:
        cfg = self.cfg
        stages = [(f"stage {i}: {s.reranker.model}", stage_score(i), stage_rank(i))
                  for i, (_, s) in enumerate(cfg.stages(), start=1)] if cfg.cascade else [
            (f"reranked: {cfg.reranker.model}", SCORE, RANK)]
        series = [ScoreSeries(*s) for s in stages]
        table = sample_rows(run.out.fs, produced.files, [QUERY_ID, DOC_ID, RANK, FIRST_STAGE_RANK,
                                                         *(s.score_column for s in series),
                                                         *(s.rank_column for s in series)])
        ndcg = {stage: {q: m[f"ndcg@{cfg.eval.k}"] for q, m in pq.items()} for stage, pq in per_query.items()}
        return render_report(table, series, title=f"batch-rerank {run.out.run_id}", counts=summary.counts(),
                             first_stage_rank=FIRST_STAGE_RANK if run.input.columns.rank else None, ndcg=ndcg,
                             k=cfg.eval.k, extra=[gates_figure(summary.gates, cfg.eval.k)])


@ray.remote
def _write_trec(fs: fsspec.AbstractFileSystem, files: list[str], dest: str, tag: str) -> int:
    """_run.trec, written by a worker: it streams every ranked row (the driver holds none)."""
    return write_trec(fs, files, dest, tag)


def run(cfg: JobConfig) -> RunSummary:
    return run_job(RerankJob(cfg))


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m jobs.rerank", __doc__.split("\n")[0], "configs/demo.yaml", load_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
