"""Rerank query-candidate pairs: Parquet in, Ray Data actor pool, ranked Parquet out.

    python -m jobs.rerank --config configs/demo.yaml [key.sub=value ...]
    ray job submit --working-dir . -- python -m jobs.rerank --config <yaml> [key.sub=value ...]

Recipe: read (footers) -> validate -> score (checkpointed per input file) -> rank ->
quarantine -> report -> commit (_SUCCESS last). A rerun of a crashed run resumes.
With no cluster address (ray.address / RAY_ADDRESS) the job starts a local Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.checkpoints import Checkpoints, fingerprint
from jobs.config import JobConfig, load_config
from jobs.errors import InputError, find_user_error
from jobs.evaluate import Qrels, evaluate, load_qrels, mean, read_run
from jobs.inputs import discover
from jobs.output import QUARANTINE, REPORT_JSON, REPORT_TEXT, OutputDir, OutputError
from jobs.quarantine import write_quarantine
from jobs.ray_runtime import check_pool_fits, ray_session
from jobs.schema import FIRST_STAGE_RANK, FIRST_STAGE_SCORE, RANK, SCORE
from jobs.stages import Scored, count_queries, footer_rows, parquet_files, rank_pairs, score_pairs
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


def _evaluate(cfg: JobConfig, out: OutputDir, scored: list[str], qrels: Qrels) -> tuple[dict, int]:
    """Mean metrics of the first stage (all scored pairs) and of the reranked output."""
    ranked = parquet_files(out.fs, out.staging("ranked"))
    runs = {"reranked": read_run(out.fs, ranked, set(qrels), RANK)}
    c = cfg.input.columns
    first = FIRST_STAGE_RANK if c.rank else FIRST_STAGE_SCORE if c.score else None
    if first:
        runs = {"first stage": read_run(out.fs, scored, set(qrels), first, where_valid=SCORE)} | runs
    per_stage = {stage: evaluate(run, qrels, cfg.eval.k) for stage, run in runs.items()}
    return {stage: mean(pq) for stage, pq in per_stage.items()}, len(per_stage["reranked"])


def scoring_fingerprint(cfg: JobConfig) -> str:
    """Everything that changes what a checkpoint holds: another value, other checkpoints."""
    inputs = cfg.input.model_dump(exclude={"path", "on_duplicate"})  # (on_duplicate acts after scoring)
    return fingerprint({"reranker": cfg.reranker.model_dump(), "input": inputs})


def _check_ranked(cfg: JobConfig, scored: Scored, rows_out: int) -> None:
    """The rank stage's files are written by workers: the driver must see all of them."""
    complete = cfg.rank.top_k is None and cfg.input.on_duplicate == "error"
    if rows_out == 0 or (complete and rows_out != scored.scored):
        raise OutputError(
            f"the rank stage wrote {rows_out} rows for {scored.scored} scored pairs: output.path "
            f"{cfg.output.path!r} must be visible to every node of the cluster (s3:// or a shared "
            "filesystem), not a node-local path"
        )


def run(cfg: JobConfig) -> RunSummary:
    clock = Stopwatch()
    with clock.stage("validate"):
        inputs = discover(cfg.input)
        qrels = load_qrels(cfg.eval.qrels) if cfg.eval.qrels else None
        out = OutputDir(cfg.output.path)
        out.prepare(inputs.paths, inputs.dirs)
        checkpoints = Checkpoints(out.fs, out.root, scoring_fingerprint(cfg))
    try:
        with ray_session(cfg.ray) as where:
            check_pool_fits(cfg.actor)
            with clock.stage("score"):
                scored = score_pairs(inputs, cfg, checkpoints)
            if scored.scored == 0:
                raise InputError(
                    f"input.path {cfg.input.path!r}: no valid pairs to rank "
                    f"({scored.pairs} read, {scored.skipped} skipped as invalid)"
                )
            shard_files = checkpoints.shard_files(scored.shard_ids)
            with clock.stage("rank"):
                rank_pairs(cfg, shard_files, out.staging("ranked"), out.fs, scored.scored)
            ranked = parquet_files(out.fs, out.staging("ranked"))
            rows_out = footer_rows(out.fs, ranked)
            _check_ranked(cfg, scored, rows_out)
            queries = count_queries(out.fs, ranked)
            quarantined = write_quarantine(out.fs, checkpoints, scored, out.staging(QUARANTINE))
            metrics, eval_queries = _evaluate(cfg, out, shard_files, qrels) if qrels else ({}, 0)
        summary = RunSummary(
            ray=where, input=str(cfg.input.path),
            input_files=[{"url": f.url, "size": f.size, "rows": f.num_rows} for f in inputs.files],
            pairs=scored.pairs, skipped=scored.skipped, quarantined=quarantined, truncated=scored.truncated,
            queries=queries, rows_out=rows_out, output=cfg.output.path, files_out=len(ranked),
            model=cfg.reranker.model, revision=cfg.reranker.revision, backend=cfg.reranker.backend,
            dtype=", ".join(scored.dtypes), config_hash=fingerprint(cfg.model_dump()),
            resumed_files=scored.resumed, scored_now=scored.scored_now, run_id=out.run_id,
            score_startup_s=scored.startup_s, score_steady_pairs_per_s=scored.steady_pairs_per_s,
            seconds=clock.seconds, metrics=metrics, eval_queries=eval_queries,
        )
        side = {REPORT_JSON: out.staging(REPORT_JSON), REPORT_TEXT: out.staging(REPORT_TEXT)}
        if quarantined:
            side[QUARANTINE] = out.staging(QUARANTINE)
        with clock.stage("commit"):
            out.fs.pipe_file(side[REPORT_JSON], json.dumps(summary.to_dict(), indent=2).encode())
            out.fs.pipe_file(side[REPORT_TEXT], (summary.render() + "\n").encode())
            out.commit(out.staging("ranked"), summary.to_dict(), side)
        checkpoints.remove_all()
    except BaseException:
        out.abort()  # (checkpoints stay: a rerun resumes from them)
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
