"""Distillation labels: teacher rerankers score query-candidate shards once, and per-query
training records come out in the formats training tools read.

    python -m jobs.distill_labels --config configs/distill_qwen3_8b_bge_m3.yaml [key.sub=value ...]
    ray job submit --working-dir . -- python -m jobs.distill_labels --config <yaml> [key.sub=value ...]

Recipe: read (footers) -> validate -> score (each teacher its own actor pool, one after the
other on each block; checkpointed per input file) -> labels (map_groups(query_id)) ->
formats -> evaluate -> report -> commit (_SUCCESS last). Under output.path:
    part-*.parquet             one row per query: its candidates with each teacher's raw score,
                               the combined score, soft label, teacher rank, positive / hard negative
    _flag_embedding/*.json     FlagEmbedding reranker fine-tuning records (JSON lines)
    _cross_encoder/*.parquet   (query, doc, label) for sentence-transformers' CrossEncoderTrainer
    _report.html, _run_report.json/.txt, _quarantine/, _SUCCESS
"""

from __future__ import annotations

import math
import sys

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data

from jobs.checkpoints import Checkpoints, fingerprint
from jobs.cli import run_cli
from jobs.distill_config import DistillConfig, load_config
from jobs.errors import InputError
from jobs.evaluate import Qrels, Run, evaluate, load_qrels, mean, read_run
from jobs.fs import arrow_filesystem
from jobs.inputs import Inputs, discover
from jobs.label_formats import cross_encoder_table, flag_embedding_records
from jobs.labels import CANDIDATES, TEACHER_RANK, LabelsConfig, Teacher, label_queries, output_schema
from jobs.output import CROSS_ENCODER, FLAG_EMBEDDING, QUARANTINE, OutputDir, commit_run
from jobs.quarantine import write_quarantine
from jobs.ranking import dedupe
from jobs.ray_runtime import check_pool_fits, ray_filesystem, ray_session
from jobs.report_html import ScoreSeries, render_report
from jobs.rerank import Stopwatch
from jobs.schema import DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE, QUERY_ID, SKIP_REASON
from jobs.score_cache import RunCaches
from jobs.stages import Scored, Scorer, parquet_files, score_pairs
from jobs.summary import RunSummary

REPORT_QUERIES = 2_000  # queries the HTML report draws from (the first ones written)


def make_labels(table: pa.Table, teachers: list[Teacher], labels: LabelsConfig, qrels: Qrels | None,
                on_duplicate: str) -> pa.Table:
    """map_groups: checkpoint rows of complete queries -> one labelled row per query."""
    table = table.filter(pc.is_null(table[SKIP_REASON]))
    if not len(table):
        return output_schema(teachers).empty_table()
    return label_queries(dedupe(table, teachers[0].column, on_duplicate), teachers, labels, qrels)


def flag_embedding(batch: pa.Table, prompt: str) -> pa.Table:
    return flag_embedding_records(batch, prompt=prompt).table


def _formats(cfg: DistillConfig, out: OutputDir) -> dict[str, str]:
    """Write the training formats from the staged records; their staged paths by name."""
    filesystem, records = ray_filesystem(out.fs), out.staging("records")
    side = {}
    if cfg.formats.flag_embedding:
        ds = ray.data.read_parquet(records, filesystem=filesystem).map_batches(
            flag_embedding, batch_format="pyarrow", fn_kwargs={"prompt": cfg.labels.prompt})
        ds.write_json(out.staging(FLAG_EMBEDDING), filesystem=filesystem, force_ascii=False)
        side[FLAG_EMBEDDING] = out.staging(FLAG_EMBEDDING)
    if cfg.formats.cross_encoder != "none":
        ds = ray.data.read_parquet(records, filesystem=filesystem).map_batches(
            cross_encoder_table, batch_format="pyarrow",
            fn_kwargs={"label": cfg.formats.cross_encoder, "combine": cfg.labels.combine})
        ds.write_parquet(out.staging(CROSS_ENCODER), filesystem=filesystem)
        side[CROSS_ENCODER] = out.staging(CROSS_ENCODER)
    return side


def _flat_sample(fs: fsspec.AbstractFileSystem, records: list[str], cfg: DistillConfig) -> pa.Table:
    """The first REPORT_QUERIES queries' labelled pairs, flat and without texts."""
    data = pads.dataset(records, filesystem=arrow_filesystem(fs), format="parquet")
    table = data.head(REPORT_QUERIES, columns=[QUERY_ID, CANDIDATES])
    flat, parent = pc.list_flatten(table[CANDIDATES]), pc.list_parent_indices(table[CANDIDATES])
    cols = {QUERY_ID: table[QUERY_ID].take(parent)}
    cols |= {name: pc.struct_field(flat, name) for name in (DOC_ID, FIRST_STAGE_RANK, TEACHER_RANK)}
    return pa.table(cols | {t.column: pc.struct_field(flat, t.name) for t in cfg.teachers})


def _evaluation(cfg: DistillConfig, qrels: Qrels, fs: fsspec.AbstractFileSystem, scored: list[str],
                records: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per-query metrics of the first stage, of each teacher and of the combined teacher ranking."""
    runs: dict[str, Run] = {}
    first = FIRST_STAGE_RANK if cfg.input.columns.rank else FIRST_STAGE_SCORE if cfg.input.columns.score else None
    if first:
        runs["first stage"] = read_run(fs, scored, set(qrels), first, where_valid=cfg.teachers[0].column)
    runs |= {f"teacher {t.name}": read_run(fs, scored, set(qrels), t.column) for t in cfg.teachers}
    data = pads.dataset(records, filesystem=arrow_filesystem(fs), format="parquet")
    table = data.to_table(columns=[QUERY_ID, CANDIDATES], filter=pc.field(QUERY_ID).isin(sorted(qrels)))
    flat, parent = pc.list_flatten(table[CANDIDATES]), pc.list_parent_indices(table[CANDIDATES])
    combined: Run = {}
    for q, d, r in zip(table[QUERY_ID].take(parent).to_pylist(), pc.struct_field(flat, DOC_ID).to_pylist(),
                       pc.struct_field(flat, TEACHER_RANK).to_pylist()):
        combined.setdefault(q, {})[d] = -float(r)
    runs["teachers combined"] = combined
    return {stage: evaluate(run, qrels, 10) for stage, run in runs.items()}


def _summary(cfg: DistillConfig, where: str, inputs: Inputs, scored: Scored, quarantined: int, out: OutputDir,
             records: list[str], per_query: dict, seconds: dict[str, float]) -> RunSummary:
    rows = pads.dataset(records, filesystem=arrow_filesystem(out.fs), format="parquet").count_rows()
    return RunSummary(
        ray=where, input=str(cfg.input.path),
        input_files=[{"url": f.url, "size": f.size, "rows": f.num_rows} for f in inputs.files],
        pairs=scored.pairs, skipped=scored.skipped, quarantined=quarantined, truncated=scored.truncated,
        queries=rows, rows_out=rows, output=cfg.output.path, files_out=len(records),
        model=" + ".join(t.reranker.model for t in cfg.teachers), revision=None,
        backend=" + ".join(t.reranker.backend for t in cfg.teachers), dtype=", ".join(scored.dtypes),
        config_hash=fingerprint(cfg.model_dump()), resumed_files=scored.resumed, scored_now=scored.scored_now,
        run_id=out.run_id, score_startup_s=scored.startup_s, score_steady_pairs_per_s=scored.steady_pairs_per_s,
        cached=scored.cached, seconds=seconds, metrics={stage: mean(pq) for stage, pq in per_query.items()},
        eval_queries=len(next(iter(per_query.values()), {})),
    )


def run(cfg: DistillConfig) -> RunSummary:
    clock = Stopwatch()
    with clock.stage("validate"):
        inputs = discover(cfg.input)
        qrels = load_qrels(cfg.qrels) if cfg.qrels else None
        out = OutputDir(cfg.output.path)
        out.prepare(inputs.paths, inputs.dirs)
        checkpoints = Checkpoints(out.fs, out.root, fingerprint({
            "teachers": [t.model_dump() for t in cfg.teachers], "cache keys": cfg.cache.path is not None,
            "input": cfg.input.model_dump(exclude={"path", "on_duplicate"})}))
        caches = RunCaches(cfg.cache.path, [t.reranker.model_dump() for t in cfg.teachers])
    try:
        with ray_session(cfg.ray) as where:
            check_pool_fits([t.actor for t in cfg.teachers])  # (the teachers' pools run together)
            with clock.stage("score"):
                scorers = [Scorer(t.column, t.reranker, t.actor, ref)
                           for t, ref in zip(cfg.teachers, caches.broadcast())]
                scored = score_pairs(inputs, cfg.input, scorers, checkpoints, keep_texts=True)
            if scored.scored == 0:
                raise InputError(f"input.path {cfg.input.path!r}: no valid pairs ({scored.pairs} read, "
                                 f"{scored.skipped} skipped as invalid)")
            shard_files = checkpoints.shard_files(scored.shard_ids)
            with clock.stage("labels"):
                ds = ray.data.read_parquet(shard_files, filesystem=ray_filesystem(out.fs))
                ds = ds.groupby(QUERY_ID, num_partitions=max(1, math.ceil(scored.scored / 1e6))).map_groups(
                    make_labels, batch_format="pyarrow", fn_kwargs={
                        "teachers": cfg.teacher_specs(), "labels": cfg.labels, "qrels": qrels,
                        "on_duplicate": cfg.input.on_duplicate})
                ds.write_parquet(out.staging("records"), filesystem=ray_filesystem(out.fs))
                records = parquet_files(out.fs, out.staging("records"))
            with clock.stage("formats"):
                side = _formats(cfg, out)
            quarantined = write_quarantine(out.fs, checkpoints, scored, out.staging(QUARANTINE))
            per_query = _evaluation(cfg, qrels, out.fs, shard_files, records) if qrels else {}
            if caches:
                for i, scorer in enumerate(scorers):
                    caches.write(i, shard_files, out.fs, out.run_id, scorer.column)
        summary = _summary(cfg, where, inputs, scored, quarantined, out, records, per_query, clock.seconds)
        html = render_report(
            _flat_sample(out.fs, records, cfg),
            [ScoreSeries(f"teacher {t.name}: {t.reranker.model}", t.column, None) for t in cfg.teachers],
            title=f"batch-rerank distillation labels {out.run_id}", counts=summary.counts(),
            first_stage_rank=FIRST_STAGE_RANK if cfg.input.columns.rank else None, final_rank=TEACHER_RANK,
            ndcg={stage: {q: m["ndcg@10"] for q, m in pq.items()} for stage, pq in per_query.items()})
        if quarantined:
            side[QUARANTINE] = out.staging(QUARANTINE)
        with clock.stage("commit"):
            commit_run(out, out.staging("records"), summary.to_dict(), summary.render(), html, side)
        caches.publish(out.run_id)
        checkpoints.remove_all()
    except BaseException:
        out.abort()  # (checkpoints stay: a rerun resumes from them)
        caches.discard(out.run_id)
        raise
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m jobs.distill_labels", __doc__.split("\n")[0], "configs/distill_qwen3_8b_bge_m3.yaml",
                   load_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
