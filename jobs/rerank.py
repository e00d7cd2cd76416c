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

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.cascade import rank_cascade
from jobs.checkpoints import Checkpoints, fingerprint
from jobs.cli import run_cli
from jobs.config import JobConfig, load_config
from jobs.errors import InputError
from jobs.evaluate import Qrels, Run, evaluate, load_qrels, mean, read_run
from jobs.fs import arrow_filesystem
from jobs.inputs import discover
from jobs.output import QUARANTINE, OutputDir, OutputError, commit_run
from jobs.quarantine import write_quarantine
from jobs.ray_runtime import check_pool_fits, ray_session
from jobs.report_html import ScoreSeries, render_report, sample_rows
from jobs.schema import DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE, QUERY_ID, RANK, SCORE, stage_rank, stage_score
from jobs.score_cache import RunCaches, cache_hits
from jobs.stages import Scored, Scorer, count_queries, footer_rows, parquet_files, rank_pairs, score_pairs
from jobs.summary import RunSummary


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def _runs(cfg: JobConfig, out: OutputDir, scored: list[str], qrels: Qrels) -> dict[str, Run]:
    """What to evaluate: the first stage on all scored pairs (before top_k), each cascade
    stage but the last (on the rows the output keeps), and the final ranking."""
    ranked = parquet_files(out.fs, out.staging("ranked"))
    runs: dict[str, Run] = {}
    c = cfg.input.columns
    first = FIRST_STAGE_RANK if c.rank else FIRST_STAGE_SCORE if c.score else None
    if first:
        runs["first stage"] = read_run(out.fs, scored, set(qrels), first, where_valid=SCORE)
    for i in range(1, len(cfg.cascade) + 1):
        runs[f"stage {i}"] = read_run(out.fs, ranked, set(qrels), stage_rank(i))
    runs["reranked"] = read_run(out.fs, ranked, set(qrels), RANK)
    return runs


def scoring_fingerprint(cfg: JobConfig) -> str:
    """Everything that changes what a checkpoint holds: another value, other checkpoints."""
    inputs = cfg.input.model_dump(exclude={"path", "on_duplicate"})  # (on_duplicate acts after scoring)
    return fingerprint({"reranker": cfg.reranker.model_dump(), "input": inputs,
                        "texts kept": bool(cfg.cascade), "cache keys": cfg.cache.path is not None})


def _check_ranked(cfg: JobConfig, scored: Scored, rows_out: int) -> None:
    """The rank stage's files are written by workers: the driver must see all of them."""
    complete = cfg.rank.top_k is None and cfg.input.on_duplicate == "error"
    if rows_out == 0 or (complete and rows_out != scored.scored):
        raise OutputError(
            f"the rank stage wrote {rows_out} rows for {scored.scored} scored pairs: output.path "
            f"{cfg.output.path!r} must be visible to every node of the cluster (s3:// or a shared "
            "filesystem), not a node-local path"
        )


def _stage_counts(cfg: JobConfig, out: OutputDir, ranked: list[str], cached: list[int]) -> list[dict]:
    """Per cascade stage: its model, how many output rows it scored, and how many of its
    pairs came from the score cache."""
    if not cfg.cascade:
        return []
    data = pads.dataset(ranked, filesystem=arrow_filesystem(out.fs), format="parquet")
    return [{"stage": i, "model": stage.reranker.model, "backend": stage.reranker.backend,
             "top_n": stage.top_n or None, "pairs": data.count_rows(filter=pc.field(stage_score(i)).is_valid()),
             "cached": cached[i - 1]}
            for i, (_, stage) in enumerate(cfg.stages(), start=1)]



def _html_report(cfg: JobConfig, out: OutputDir, ranked: list[str], summary: RunSummary,
                 per_query: dict[str, dict[str, dict[str, float]]]) -> str:
    stages = [(f"stage {i}: {s.reranker.model}", stage_score(i), stage_rank(i))
              for i, (_, s) in enumerate(cfg.stages(), start=1)] if cfg.cascade else [
        (f"reranked: {cfg.reranker.model}", SCORE, RANK)]
    series = [ScoreSeries(*s) for s in stages]
    table = sample_rows(out.fs, ranked, [QUERY_ID, DOC_ID, RANK, FIRST_STAGE_RANK, *(s.score_column for s in series),
                                         *(s.rank_column for s in series)])
    ndcg = {stage: {q: m[f"ndcg@{cfg.eval.k}"] for q, m in pq.items()} for stage, pq in per_query.items()}
    return render_report(table, series, title=f"batch-rerank {out.run_id}", counts=summary.counts(),
                         first_stage_rank=FIRST_STAGE_RANK if cfg.input.columns.rank else None, ndcg=ndcg,
                         k=cfg.eval.k)


def run(cfg: JobConfig) -> RunSummary:
    clock = Stopwatch()
    with clock.stage("validate"):
        inputs = discover(cfg.input)
        qrels = load_qrels(cfg.eval.qrels) if cfg.eval.qrels else None
        out = OutputDir(cfg.output.path)
        out.prepare(inputs.paths, inputs.dirs)
        checkpoints = Checkpoints(out.fs, out.root, scoring_fingerprint(cfg))
        caches = RunCaches(cfg.cache.path, [stage.reranker.model_dump() for _, stage in cfg.stages()])
    try:
        with ray_session(cfg.ray) as where:
            check_pool_fits([cfg.actor])
            check_pool_fits([stage.actor for stage in cfg.cascade])  # (stages 2.. run together)
            with clock.stage("score"):
                refs = caches.broadcast()
                scorer = Scorer(SCORE, cfg.reranker, cfg.actor, refs[0])
                scored = score_pairs(inputs, cfg.input, [scorer], checkpoints, keep_texts=bool(cfg.cascade))
            if scored.scored == 0:
                raise InputError(
                    f"input.path {cfg.input.path!r}: no valid pairs to rank "
                    f"({scored.pairs} read, {scored.skipped} skipped as invalid)"
                )
            shard_files = checkpoints.shard_files(scored.shard_ids)
            with clock.stage("cascade + rank" if cfg.cascade else "rank"):
                if cfg.cascade:
                    stage_dirs = rank_cascade(cfg, shard_files, out.staging("cascade"), out.staging("ranked"),
                                              out.fs, scored.scored, refs[1:])
                else:
                    rank_pairs(cfg, shard_files, out.staging("ranked"), out.fs, scored.scored)
            ranked = parquet_files(out.fs, out.staging("ranked"))
            rows_out = footer_rows(out.fs, ranked)
            _check_ranked(cfg, scored, rows_out)
            queries = count_queries(out.fs, ranked)
            quarantined = write_quarantine(out.fs, checkpoints, scored, out.staging(QUARANTINE))
            per_query = {stage: evaluate(r, qrels, cfg.eval.k) for stage, r in _runs(cfg, out, shard_files,
                                                                                      qrels).items()} if qrels else {}
            stage_files = [parquet_files(out.fs, d) for d in stage_dirs] if cfg.cascade else []
            if caches:
                caches.write(0, shard_files, out.fs, out.run_id, SCORE)
                for i, files in enumerate(stage_files, start=2):
                    caches.write(i - 1, files, out.fs, out.run_id, stage_score(i))
            stage_cached = [scored.cached, *(cache_hits(out.fs, files, stage_score(i))
                                             for i, files in enumerate(stage_files, start=2))]
        summary = RunSummary(
            ray=where, input=str(cfg.input.path),
            input_files=[{"url": f.url, "size": f.size, "rows": f.num_rows} for f in inputs.files],
            pairs=scored.pairs, skipped=scored.skipped, quarantined=quarantined, truncated=scored.truncated,
            queries=queries, rows_out=rows_out, output=cfg.output.path, files_out=len(ranked),
            model=cfg.reranker.model, revision=cfg.reranker.revision, backend=cfg.reranker.backend,
            dtype=", ".join(scored.dtypes), config_hash=fingerprint(cfg.model_dump()),
            resumed_files=scored.resumed, scored_now=scored.scored_now, run_id=out.run_id,
            score_startup_s=scored.startup_s, score_steady_pairs_per_s=scored.steady_pairs_per_s,
            cached=scored.cached, cache=caches.of[0].url if caches else None,
            cache_entries=caches.entries[caches.of[0].namespace] if caches else 0,
            stages=_stage_counts(cfg, out, ranked, stage_cached),
            seconds=clock.seconds, metrics={stage: mean(pq) for stage, pq in per_query.items()},
            eval_queries=len(per_query.get("reranked", {})),
        )
        html = _html_report(cfg, out, ranked, summary, per_query)
        side = {QUARANTINE: out.staging(QUARANTINE)} if quarantined else {}
        with clock.stage("commit"):
            commit_run(out, out.staging("ranked"), summary.to_dict(), summary.render(), html, side)
        caches.publish(out.run_id)
        checkpoints.remove_all()
    except BaseException:
        out.abort()  # (checkpoints stay: a rerun resumes from them)
        caches.discard(out.run_id)
        raise
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m jobs.rerank", __doc__.split("\n")[0], "configs/demo.yaml", load_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
