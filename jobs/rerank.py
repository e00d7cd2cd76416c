"""Rerank query-candidate pairs: Parquet in, Ray Data actor pool, ranked Parquet out.

    python -m jobs.rerank --config configs/demo.yaml [key.sub=value ...]
    ray job submit --working-dir . -- python -m jobs.rerank --config <yaml> [key.sub=value ...]

Recipe: read (footers) -> validate -> score -> rank -> write (commit) -> report.
With no cluster address (ray.address / RAY_ADDRESS) the job starts a local Ray.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.config import JobConfig, load_config
from jobs.errors import InputError, find_user_error
from jobs.evaluate import Qrels, evaluate, load_qrels, mean, read_run
from jobs.inputs import discover
from jobs.output import OutputDir, OutputError
from jobs.ray_runtime import check_pool_fits, ray_session
from jobs.schema import FIRST_STAGE_RANK, FIRST_STAGE_SCORE, RANK, SCORE
from jobs.stages import (
    count_queries,
    count_scored,
    footer_rows,
    parquet_files,
    rank_pairs,
    score_pairs,
)
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


def _evaluate(cfg: JobConfig, out: OutputDir, qrels: Qrels) -> tuple[dict, int]:
    """Mean metrics of the first stage (all scored pairs) and of the reranked output."""
    scored = parquet_files(out.fs, out.staging("scored"))
    ranked = parquet_files(out.fs, out.staging("ranked"))
    runs = {"reranked": read_run(out.fs, ranked, set(qrels), RANK)}
    c = cfg.input.columns
    first = FIRST_STAGE_RANK if c.rank else FIRST_STAGE_SCORE if c.score else None
    if first:
        runs = {"first stage": read_run(out.fs, scored, set(qrels), first, where_valid=SCORE)} | runs
    per_stage = {stage: evaluate(run, qrels, cfg.eval.k) for stage, run in runs.items()}
    return {stage: mean(pq) for stage, pq in per_stage.items()}, len(per_stage["reranked"])


def run(cfg: JobConfig) -> RunSummary:
    clock = Stopwatch()
    with clock.stage("validate"):
        inputs = discover(cfg.input)
        qrels = load_qrels(cfg.eval.qrels) if cfg.eval.qrels else None
        out = OutputDir(cfg.output.path)
        out.prepare(inputs.paths, inputs.dirs)
    try:
        with ray_session(cfg.ray) as where:
            check_pool_fits(cfg.actor)
            with clock.stage("score"):
                score_pairs(inputs, cfg, out.staging("scored"), out.fs)
            counts = count_scored(out.fs, out.staging("scored"))
            if cfg.input.layout == "flat" and counts.pairs != inputs.num_rows:
                raise OutputError(
                    f"the score stage wrote {counts.pairs} rows but the input has {inputs.num_rows}: "
                    f"output.path {cfg.output.path!r} must be visible to every node of the cluster "
                    "(s3:// or a shared filesystem), not a node-local path"
                )
            if counts.scored == 0:
                raise InputError(
                    f"input.path {cfg.input.path!r}: no valid pairs to rank "
                    f"({counts.pairs} read, {counts.skipped} skipped as invalid)"
                )
            with clock.stage("rank"):
                rank_pairs(cfg, out.staging("scored"), out.staging("ranked"), out.fs, counts.scored)
            ranked = parquet_files(out.fs, out.staging("ranked"))
            queries = count_queries(out.fs, ranked)
            rows_out = footer_rows(out.fs, ranked)
            metrics, eval_queries = _evaluate(cfg, out, qrels) if qrels else ({}, 0)
        summary = RunSummary(
            ray=where, input=str(cfg.input.path), input_files=len(inputs.files),
            pairs=counts.pairs, skipped=counts.skipped, queries=queries, rows_out=rows_out,
            output=cfg.output.path, files_out=len(ranked), model=cfg.reranker.model,
            backend=cfg.reranker.backend, dtype=", ".join(counts.dtypes), seconds=clock.seconds,
            metrics=metrics, eval_queries=eval_queries,
        )
        with clock.stage("commit"):
            out.commit(out.staging("ranked"), summary.to_dict())
    except BaseException:
        out.abort()
        raise
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="job YAML, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config keys, e.g. output.path=/tmp/out reranker.dtype=float32")
    args = parser.parse_args(argv)
    try:
        summary = run(load_config(args.config, args.overrides))
    except Exception as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        print(f"batch-rerank: error: {user_error}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
