"""One run of a job, from validation to `_SUCCESS`, the same for every entrypoint.

    validate (inputs' footers, qrels, output dir, checkpoints, caches)
      -> Ray session -> score (checkpointed every few seconds; cached pairs skip the model)
      -> the job's own stages (rank, cascade, labels, formats)
      -> quarantine -> evaluation -> quality gates -> cache rows -> report -> commit (_SUCCESS last)
      -> publish the caches, remove the checkpoints
A failure anywhere removes what the run staged and leaves the previous output and
caches as they were; the checkpoints stay, so a rerun of the same command resumes. A run
the quality gates refuse (jobs.gates) keeps its staged output and reports too, for the
operator, and exits with status 3.

An entrypoint supplies only what differs, as a `Job`: its scorers, its stages after
scoring, its summary fields and its HTML report.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from jobs.canaries import CanaryFile, load_canaries
from jobs.checkpoints import Checkpoints, FileParts, fingerprint
from jobs.config import ActorConfig, CacheConfig, HealthGates, InputConfig, RayConfig
from jobs.errors import GateFailure, InputError
from jobs.evaluate import Qrels, load_qrels, mean
from jobs.gates import REFUSED, GateResults, refusal, refused_marker
from jobs.inputs import Inputs, discover
from jobs.output import QUARANTINE, STAGING, OutputDir, commit_run, stage_reports
from jobs.quarantine import write_quarantine
from jobs.ray_runtime import check_pool_fits, ray_session
from jobs.run_inputs import convert_runs, converted_dir
from jobs.score_cache import RunCaches
from jobs.stages import Scored, Scorer, score_pairs
from jobs.summary import RunSummary
from reranker_actors.base import RerankerConfig


class Stopwatch:
    """Wall seconds per named stage of a run, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


@dataclass
class Run:
    """What a validated run works with."""

    inputs: Inputs
    qrels: Qrels | None
    out: OutputDir
    checkpoints: Checkpoints
    caches: RunCaches
    clock: Stopwatch
    lookups: list[Any] = field(default_factory=list)  # per scorer: the ShardedIndex of its cache, or None
    groups: list[FileParts] = field(default_factory=list)  # the checkpoint files, per input file
    by_file: bool = False  # no query has rows in two input files: whole queries go file by file
    canaries: CanaryFile | None = None  # gates.canaries, read and checked

    @property
    def input(self) -> InputConfig:
        """input as the files are read (a TREC or MS MARCO run: its rank and score columns)."""
        assert self.inputs.cfg is not None
        return self.inputs.cfg


@dataclass
class Produced:
    """What a job's stages after scoring staged: the part files' directory, side outputs by
    name (jobs.output.SIDE_OUTPUTS), and per scorer index the files and score column its
    cache keeps."""

    staged: str
    side: dict[str, str] = field(default_factory=dict)
    cache_rows: list[tuple[int, list[str], str]] = field(default_factory=list)


P = TypeVar("P", bound=Produced)


class Job(ABC, Generic[P]):
    """An entrypoint's part of a run; `run_job` does the rest."""

    config: BaseModel  # the whole job config (its hash goes into the run report)
    input: InputConfig
    output_path: str
    cache: CacheConfig
    ray: RayConfig
    qrels_path: str | None
    keep_texts: bool  # the checkpoints keep the texts: a later stage scores them again
    gates: HealthGates
    passage_columns: bool = False  # its scorers write passages, best_passage, best_passage_chars
    title_apart: str | None = None  # the run layout's passages.title: the corpus's title, kept apart

    def canary(self, run: Run, column: str) -> dict[str, Any] | None:
        """What the actors scoring `column` check at start (gates.canaries), or None."""
        return run.canaries.for_column(column) if run.canaries else None

    def open_gates(self, run: Run) -> None:
        """Check, before any work, what the gates read besides the output (canaries, a baseline)."""
        if self.gates.canaries:
            run.canaries = load_canaries(self.gates.canaries, self.score_columns(), self.gates.canary_tolerance)

    @abstractmethod
    def score_columns(self) -> list[str]:
        """Each model's score column as the output (and a canary file) names it."""

    @abstractmethod
    def check_gates(self, run: Run, scored: Scored, produced: P, per_query: dict[str, dict[str, dict[str, float]]],
                    non_finite: int) -> GateResults:
        """Measure the run's health (and the job's own figures) and check them against its gates."""

    @abstractmethod
    def rerankers(self) -> list[RerankerConfig]:
        """Every scorer's model, by scorer index (a cache namespace each)."""

    @abstractmethod
    def pools(self) -> list[list[ActorConfig]]:
        """Groups of actor pools that run at the same time (checked to fit the cluster)."""

    @abstractmethod
    def scorers(self, run: Run) -> list[Scorer]:
        """The scorers of the checkpointed score stage, one after the other on each block."""

    @abstractmethod
    def checkpoint_settings(self) -> dict[str, Any]:
        """Everything that changes what a checkpoint holds."""

    @abstractmethod
    def produce(self, run: Run, scored: Scored, shards: list[str]) -> P:
        """The stages after scoring (timed with run.clock), from the checkpoint files `shards`."""

    @abstractmethod
    def evaluate(self, run: Run, shards: list[str], produced: P) -> dict[str, dict[str, dict[str, float]]]:
        """Per stage, per query, metrics against run.qrels (only called with qrels)."""

    @abstractmethod
    def summary_fields(self, run: Run, scored: Scored, produced: P) -> dict[str, Any]:
        """RunSummary fields only this job knows: queries, rows out, model, stages..."""

    @abstractmethod
    def report(self, run: Run, produced: P, summary: RunSummary,
               per_query: dict[str, dict[str, dict[str, float]]]) -> str:
        """The self-contained HTML report."""


def _open(job: Job, clock: Stopwatch) -> Run:
    """Validate before any work: the inputs' footers, qrels and the output directory."""
    with clock.stage("validate"):
        inputs = discover(job.input, job.title_apart)
        qrels = load_qrels(job.qrels_path) if job.qrels_path else None
        out = OutputDir(job.output_path)
        out.prepare(inputs.paths, inputs.dirs)
        texts = {"texts": inputs.version} if inputs.version else {}  # (the run layout's corpus and queries)
        checkpoints = Checkpoints(out.fs, out.root, fingerprint(job.checkpoint_settings() | texts))
        run = Run(inputs, qrels, out, checkpoints, RunCaches(job.cache, job.rerankers(), job.passage_columns), clock)
        job.open_gates(run)
        return run


def _score(job: Job, run: Run) -> Scored:
    with run.clock.stage("score"):
        run.lookups = run.caches.serve()
        run.inputs = convert_runs(run.inputs, run.out.fs, converted_dir(run.checkpoints.root))
        scored = score_pairs(run.inputs, run.input, job.scorers(run), run.checkpoints, keep_texts=job.keep_texts)
    if scored.scored == 0:
        raise InputError(f"input.path {job.input.path!r}: no valid pairs ({scored.pairs} read, "
                         f"{scored.skipped} skipped as invalid)")
    return scored


def _summary(job: Job, run: Run, where: str, scored: Scored, quarantined: int, fields: dict[str, Any],
             per_query: dict[str, dict[str, dict[str, float]]], gates: GateResults) -> RunSummary:
    return RunSummary(
        ray=where, input=str(job.input.path),
        input_files=[{"url": f.url, "size": f.size, "rows": f.num_rows} for f in run.inputs.files],
        pairs=scored.pairs, skipped=scored.skipped, quarantined=quarantined, truncated=scored.truncated,
        passages=scored.passages, passages_capped=scored.capped,
        output=job.output_path, dtype=", ".join(scored.dtypes), attention=", ".join(scored.attention),
        config_hash=fingerprint(job.config.model_dump()),
        resumed_pairs=scored.resumed, scored_now=scored.scored_now, run_id=run.out.run_id,
        score_startup_s=scored.startup_s, score_steady_pairs_per_s=scored.steady_pairs_per_s,
        cached=scored.cached, by_file=run.by_file, seconds=run.clock.seconds,
        metrics={stage: mean(pq) for stage, pq in per_query.items()},
        eval_queries=len(list(per_query.values())[-1]) if per_query else 0, gates=gates.as_dict(),
        gate_lines=gates.lines(), **fields,
    )


def run_job(job: Job) -> RunSummary:
    """Run `job` start to finish; on any failure leave the last good output as it was."""
    run = _open(job, Stopwatch())
    try:
        with ray_session(job.ray) as where:
            for pools in job.pools():
                check_pool_fits(pools)
            try:
                scored = _score(job, run)
                run.groups = run.checkpoints.by_input(scored.entries)
                run.by_file = run.checkpoints.queries_disjoint(scored.entries)
                shards = [f for group in run.groups for f in group.files]
                produced = job.produce(run, scored, shards)
            finally:
                run.caches.close()  # (the cache's shard actors: lookups are over)
            quarantined, non_finite = write_quarantine(run.out.fs, run.checkpoints, scored,
                                                       run.out.staging(QUARANTINE))
            per_query = job.evaluate(run, shards, produced) if run.qrels else {}
            with run.clock.stage("gates"):
                gates = job.check_gates(run, scored, produced, per_query, non_finite)
            if run.caches and not gates.refused:
                with run.clock.stage("cache"):
                    for scorer, files, column in produced.cache_rows:
                        run.caches.write(scorer, files, run.out.fs, run.out.run_id, column)
            fields = job.summary_fields(run, scored, produced)
        summary = _summary(job, run, where, scored, quarantined, fields, per_query, gates)
        html = job.report(run, produced, summary, per_query)
        if gates.refused:
            raise _refuse(run, gates, summary, html)
        side = produced.side | ({QUARANTINE: run.out.staging(QUARANTINE)} if quarantined else {})
        with run.clock.stage("commit"):
            commit_run(run.out, produced.staged, summary.to_dict(), summary.render(), html, side)
        run.caches.publish(run.out.run_id)
        run.checkpoints.remove_all()
    except Refused:
        run.caches.discard(run.out.run_id)  # (the staged output and the checkpoints stay)
        raise
    except BaseException:
        run.out.abort()  # (checkpoints stay: a rerun resumes from them)
        run.caches.discard(run.out.run_id)
        raise
    return summary


class Refused(GateFailure):
    """The gates refused a finished run; its summary is printed before the message."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def _refuse(run: Run, gates: GateResults, summary: RunSummary, html: str) -> Refused:
    """Keep the refused run's staging (ranked output, quarantine, reports, a _REFUSED marker)."""
    text = summary.render()
    stage_reports(run.out, summary.to_dict(), text, html)
    run.out.fs.pipe_file(run.out.staging(REFUSED), refused_marker(gates))
    failure = refusal(gates, run.out.url, run.out.path(STAGING, run.out.run_id), run.checkpoints.root)
    return Refused(str(failure), text)
