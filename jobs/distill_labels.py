"""Distillation labels: teacher rerankers score query-candidate shards once, and per-query
training records come out in the formats training tools read.

    python -m jobs.distill_labels --config configs/distill_qwen3_8b_bge_m3.yaml [key.sub=value ...]
    ray job submit --working-dir . -- python -m jobs.distill_labels --config <yaml> [key.sub=value ...]

Recipe: read (footers) -> validate -> score (each teacher its own actor pool, one after the
other on each block; checkpointed per input file) -> labels (whole queries: file by file, or
map_groups(query_id) when a query spans input files) ->
formats -> evaluate -> report -> commit (_SUCCESS last). Under output.path:
    part-*.parquet             one row per query: its candidates with each teacher's raw score,
                               the combined score, soft label, teacher rank, positive / hard negative
    _flag_embedding/*.json     FlagEmbedding reranker fine-tuning records (JSON lines)
    _cross_encoder/*.parquet   (query, doc, label) for sentence-transformers' CrossEncoderTrainer
    _report.html, _run_report.json/.txt, _quarantine/, _SUCCESS
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data

from jobs.cli import run_cli
from jobs.config import ActorConfig, reading_input, title_apart
from jobs.distill_config import DistillConfig, load_config
from jobs.evaluate import Qrels, evaluate, read_run
from jobs.evaluate import Run as Ranking
from jobs.fs import arrow_filesystem
from jobs.gates import GateResults, health_gates, nan_and_truncation, read_stats
from jobs.label_formats import cross_encoder_table, flag_embedding_records
from jobs.labels import CANDIDATES, TEACHER_RANK, LabelsConfig, Teacher, label_queries, output_schema
from jobs.lifecycle import Job, Produced, Run, run_job
from jobs.output import CROSS_ENCODER, FLAG_EMBEDDING, OutputDir
from jobs.ranking import dedupe
from jobs.ray_runtime import ray_filesystem
from jobs.report_gates import gates_figure
from jobs.report_html import ScoreSeries, render_report
from jobs.schema import DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE, QUERY_ID, SKIP_REASON
from jobs.stages import Scored, Scorer, map_queries, parquet_files
from jobs.summary import RunSummary
from reranker_actors.base import RerankerConfig
from reranker_actors.registry import score_settings

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


@dataclass
class Labelled(Produced):
    records: list[str] = field(default_factory=list)  # the labelled part files, staged


class DistillJob(Job[Labelled]):
    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = self.config = cfg
        self.input, self.output_path, self.cache = reading_input(cfg.input, cfg.passages), cfg.output.path, cfg.cache
        self.title_apart = title_apart(cfg.input, cfg.passages)
        self.ray, self.qrels_path = cfg.ray, cfg.qrels
        self.keep_texts = True  # (the labels carry them)
        self.gates = cfg.gates

    def rerankers(self) -> list[RerankerConfig]:
        return [t.reranker for t in self.cfg.teachers]

    def pools(self) -> list[list[ActorConfig]]:
        return [[t.actor for t in self.cfg.teachers]]  # (the teachers' pools run together)

    def scorers(self, run: Run) -> list[Scorer]:
        return [Scorer(t.column, t.reranker, t.actor, ref, self.canary(run, t.column), self.gates.max_nan_share,
                       self.gates.mode == "warn")
                for t, ref in zip(self.cfg.teachers, run.lookups, strict=True)]

    def score_columns(self) -> list[str]:
        return [t.column for t in self.cfg.teachers]

    def check_gates(self, run: Run, scored: Scored, produced: Labelled,
                    per_query: dict[str, dict[str, dict[str, float]]], non_finite: int) -> GateResults:
        """Each teacher's health (gated alike) and every pair of teachers' agreement."""
        gates, names = self.gates, [t.name for t in self.cfg.teachers]
        stats, _ = read_stats(run.out.fs, produced.records, names, None, 0, 0, nested=names, agree=len(names) > 1)
        results = GateResults(gates.mode)
        nan_and_truncation(results, gates, non_finite, scored.scored, scored.truncated)
        for name in names:
            health_gates(results, stats, name, gates, f"teacher {name}")
        for (a, b), (total, queries) in stats.agreement.items():
            results.add(f"teacher_agreement ({a}, {b})", total / queries if queries else None, gates,
                        "min_teacher_agreement", at_least=True)
        return results

    def checkpoint_settings(self) -> dict[str, Any]:
        return {"teachers": [{"name": t.name, "reranker": score_settings(t.reranker)} for t in self.cfg.teachers],
                "cache keys": self.cache.path is not None,
                "input": self.cfg.input.model_dump(exclude={"path", "on_duplicate"})}

    def produce(self, run: Run, scored: Scored, shards: list[str]) -> Labelled:
        cfg, out = self.cfg, run.out
        labelled = Labelled(out.staging("records"),
                            cache_rows=[(i, shards, t.column) for i, t in enumerate(cfg.teachers)])
        with run.clock.stage("labels"):
            map_queries(run.groups, make_labels, {"teachers": cfg.teacher_specs(), "labels": cfg.labels,
                                              "qrels": run.qrels, "on_duplicate": cfg.input.on_duplicate},
                        labelled.staged, out.fs, scored.scored, run.by_file)
            labelled.records = parquet_files(out.fs, labelled.staged)
        with run.clock.stage("formats"):
            labelled.side = _formats(cfg, out)
        return labelled

    def evaluate(self, run: Run, shards: list[str], produced: Labelled) -> dict[str, dict[str, dict[str, float]]]:
        """The first stage, each teacher, and the teachers' combined ranking."""
        assert run.qrels is not None
        cfg, fs, qrels = self.cfg, run.out.fs, run.qrels
        runs: dict[str, Ranking] = {}
        c = run.input.columns
        first = FIRST_STAGE_RANK if c.rank else FIRST_STAGE_SCORE if c.score else None
        if first:
            runs["first stage"] = read_run(fs, shards, set(qrels), first, where_valid=cfg.teachers[0].column)
        runs |= {f"teacher {t.name}": read_run(fs, shards, set(qrels), t.column) for t in cfg.teachers}
        runs["teachers combined"] = _combined_run(fs, produced.records, qrels)
        return {stage: evaluate(r, qrels, 10) for stage, r in runs.items()}

    def summary_fields(self, run: Run, scored: Scored, produced: Labelled) -> dict[str, Any]:
        teachers = self.cfg.teachers
        rows = pads.dataset(produced.records, filesystem=arrow_filesystem(run.out.fs), format="parquet").count_rows()
        return dict(queries=rows, rows_out=rows, files_out=len(produced.records),
                    model=" + ".join(t.reranker.model for t in teachers), revision=None,
                    backend=" + ".join(t.reranker.backend for t in teachers))

    def report(self, run: Run, produced: Labelled, summary: RunSummary,
               per_query: dict[str, dict[str, dict[str, float]]]) -> str:
        cfg = self.cfg
        return render_report(
            _flat_sample(run.out.fs, produced.records, cfg),
            [ScoreSeries(f"teacher {t.name}: {t.reranker.model}", t.column, None) for t in cfg.teachers],
            title=f"batch-rerank distillation labels {run.out.run_id}", counts=summary.counts(),
            first_stage_rank=FIRST_STAGE_RANK if run.input.columns.rank else None, final_rank=TEACHER_RANK,
            ndcg={stage: {q: m["ndcg@10"] for q, m in pq.items()} for stage, pq in per_query.items()},
            extra=[gates_figure(summary.gates, 10)])


def _combined_run(fs: fsspec.AbstractFileSystem, records: list[str], qrels: Qrels) -> Ranking:
    """The teachers' combined ranking of the judged queries, read from the labelled records."""
    data = pads.dataset(records, filesystem=arrow_filesystem(fs), format="parquet")
    table = data.to_table(columns=[QUERY_ID, CANDIDATES], filter=pc.field(QUERY_ID).isin(sorted(qrels)))
    flat, parent = pc.list_flatten(table[CANDIDATES]), pc.list_parent_indices(table[CANDIDATES])
    combined: Ranking = {}
    for q, d, r in zip(table[QUERY_ID].take(parent).to_pylist(), pc.struct_field(flat, DOC_ID).to_pylist(),
                       pc.struct_field(flat, TEACHER_RANK).to_pylist(), strict=True):
        combined.setdefault(q, {})[d] = -float(r)
    return combined


def run(cfg: DistillConfig) -> RunSummary:
    return run_job(DistillJob(cfg))


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m jobs.distill_labels", __doc__.split("\n")[0], "configs/distill_qwen3_8b_bge_m3.yaml",
                   load_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
