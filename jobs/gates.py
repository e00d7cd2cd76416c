"""Quality gates: what a run must show before it is published (`gates:` in a job config).

Score health is measured on every run and reported always; a gate is a threshold on one
figure, checked only where its key is set (max_nan_share: 0 unless set). With mode enforce a
failed gate refuses the run: exit status 3, nothing under output.path changes, and the run's
staged output, reports and checkpoints stay under output.path/_staging/<run id>/ and
_checkpoints/ for the operator to look at; the same command with gates.mode=warn then
publishes them without rescoring. With mode warn the run publishes and the report says
which gates failed.

The figures (jobs.gate_stats reads them from the output in one pass, about two Ray tasks
per CPU, each a run of part files; the baseline's beside them):
    nan_share       NaN or infinite scores (quarantined) / pairs scored
    score_spread    standard deviation of the scores
    tied_share      pairs whose score equals another candidate's of the same query
    truncated_share pairs the model saw cut to max_length
    ndcg@k, ndcg@k / first stage   nDCG@eval.k against eval.qrels (jobs.rerank)
    topk_overlap, top1_changed_share, score_shift (PSI), score_shift (KS)   against gates.baseline
    teacher_agreement (a, b)   mean per-query Spearman rho of two teachers' scores (distillation)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from jobs.config import DRIFT_GATES, GatesConfig, HealthGates
from jobs.errors import ConfigError, GateFailure
from jobs.gate_stats import (
    Drift,
    FileStats,
    PendingStats,
    buckets_for,
    gather_drift,
    psi_and_ks,
    read_stats,
    submit_drift,
    submit_stats,
)
from jobs.output import PART_FILE, REFUSED, SUCCESS
from jobs.schema import SCORE


@dataclass
class Gate:
    figure: str  # what was measured, e.g. "nan_share" or "score_spread (stage 1)"
    value: float | None  # None: not measurable in this run (e.g. no query in common with the baseline)
    key: str | None = None  # the gate's config key (gates.<key>), None: reported only
    threshold: float | None = None
    at_least: bool = False  # the value must be >= threshold (else <=)

    @property
    def failed(self) -> bool:
        if self.threshold is None or self.value is None:
            return False
        return self.value < self.threshold if self.at_least else self.value > self.threshold

    def verdict(self) -> str:
        if self.threshold is None:
            return "reported"
        return "FAILED" if self.failed else "passed" if self.value is not None else "not measurable"

    def measured(self) -> str:
        """e.g. "ndcg@10 / first stage 0.1734 (gates.min_ratio_to_first_stage >= 0.9)"."""
        value = "-" if self.value is None else f"{self.value:.4g}"
        rule = f" (gates.{self.key} {'>=' if self.at_least else '<='} {self.threshold:g})" if self.key and \
            self.threshold is not None else ""
        return f"{self.figure} {value}{rule}"

    def line(self) -> str:
        return f"{self.verdict():<8} {self.measured()}"


@dataclass
class GateResults:
    mode: str
    gates: list[Gate] = field(default_factory=list)
    drift_histogram: list[int] = field(default_factory=list)  # queries per top-k overlap bin (20 bins of 0.05)

    def add(self, figure: str, value: float | None, cfg: Any = None, key: str | None = None,
            at_least: bool = False) -> None:
        threshold = getattr(cfg, key) if cfg is not None and key else None
        self.gates.append(Gate(figure, value, key if threshold is not None else None, threshold, at_least))

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.failed]

    @property
    def refused(self) -> bool:
        return self.mode == "enforce" and bool(self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "refused": self.refused, "gates": [asdict(g) | {"verdict": g.verdict()}
                                                                      for g in self.gates],
                "topk_overlap_histogram": self.drift_histogram}

    def lines(self) -> list[str]:
        failed = self.failed
        head = (f"{len(failed)} of {sum(g.threshold is not None for g in self.gates)} gate(s) failed"
                if failed else f"all {sum(g.threshold is not None for g in self.gates)} gate(s) passed")
        head += "; the run was refused, nothing published" if self.refused else \
            " (mode warn: published anyway)" if failed else ""
        return [f"gates     {head}", *(f"          {g.line()}" for g in self.gates)]


def health_gates(results: GateResults, stats: FileStats, column: str, cfg: HealthGates, label: str = "",
                 gated: bool = True) -> None:
    """Score spread and ties of one score column (gated or, e.g. a cascade's earlier stage, reported)."""
    h = stats.health.get(column)
    if h is None:
        return
    suffix = f" ({label})" if label else ""
    results.add(f"score_spread{suffix}", h.std, cfg if gated else None, "min_score_spread", at_least=True)
    results.add(f"tied_share{suffix}", h.tied_share, cfg if gated else None, "max_tied_share")


def nan_and_truncation(results: GateResults, cfg: HealthGates, non_finite: int, scored: int,
                       truncated: int) -> None:
    results.add("nan_share", non_finite / (scored + non_finite) if scored + non_finite else 0.0, cfg,
                "max_nan_share")
    results.add("truncated_share", truncated / scored if scored else 0.0, cfg, "max_truncated_share")


def eval_gates(results: GateResults, cfg: GatesConfig, metrics: dict[str, dict[str, float]], k: int) -> None:
    key = f"ndcg@{k}"
    final = metrics.get("reranked", {}).get(key)
    if final is None:
        return
    results.add(key, final, cfg, "min_ndcg", at_least=True)
    first = metrics.get("first stage", {}).get(key)
    if first is not None:
        ratio = final / first if first > 0 else (math.inf if final > 0 else 1.0)
        results.add(f"{key} / first stage", ratio, cfg, "min_ratio_to_first_stage", at_least=True)


def baseline_files(url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The part files of a published output (checked before any work starts)."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(f"{root.rstrip('/')}/{SUCCESS}"):
        raise ConfigError(f"gates.baseline {url!r}: no {SUCCESS}; the baseline must be an output directory "
                          "that a run published")
    names = [p for p in fs.ls(root, detail=False) if PART_FILE.match(p.rstrip("/").rsplit("/", 1)[-1])]
    if not names:
        raise ConfigError(f"gates.baseline {url!r}: no part-*.parquet files")
    return fs, sorted(names)


def baseline_stats(cfg: GatesConfig, k: int, buckets: int) -> PendingStats:
    """The stats tasks of gates.baseline's part files (submitted, beside this run's)."""
    base_fs, base_files = baseline_files(str(cfg.baseline))
    return submit_stats(base_fs, base_files, [SCORE], SCORE, k, buckets)


def drift_gates(results: GateResults, cfg: GatesConfig, stats: FileStats, base: FileStats, drift: Drift) -> None:
    """Drift against gates.baseline: always reported when a baseline is given, gated by key."""
    shared = drift.shared or None
    results.add("topk_overlap", drift.mean_overlap if shared else None, cfg, "min_topk_overlap", at_least=True)
    results.add("top1_changed_share", drift.top1_changed_share if shared else None, cfg, "max_top1_changed_share")
    psi, ks = (psi_and_ks(stats.histogram, base.histogram)
               if stats.histogram is not None and base.histogram is not None else (None, None))
    results.add("score_shift (PSI)", psi, cfg, "max_score_shift")
    results.add("score_shift (KS)", ks)
    results.add("queries shared with the baseline", float(drift.shared))
    results.add("queries not in the baseline", float(drift.only_new))
    results.drift_histogram = drift.overlap_histogram.tolist()


def check_drift_config(cfg: GatesConfig) -> None:
    """Before any work: a baseline that is not published fails now, not after the night."""
    if cfg.baseline:
        baseline_files(cfg.baseline)
    elif any(getattr(cfg, k) is not None for k in DRIFT_GATES):  # (validation refuses it; belt and braces)
        raise ConfigError("gates: drift gates need gates.baseline")


def refusal(results: GateResults, output: str, staging: str, checkpoints: str) -> GateFailure:
    failed = "; ".join(g.measured() for g in results.failed)
    return GateFailure(
        f"quality gates refused the run: {failed}. Nothing under output.path {output!r} changed. The run's "
        f"ranked output and reports are in {staging}/ and its scores in {checkpoints}/; to publish them "
        "anyway, rerun the same command with gates.mode=warn (nothing is scored again)."
    )


def refused_marker(results: GateResults) -> bytes:
    return json.dumps(results.as_dict(), indent=2).encode()


__all__ = ["REFUSED", "Gate", "GateResults", "baseline_stats", "buckets_for", "check_drift_config", "drift_gates",
           "eval_gates", "gather_drift", "health_gates", "nan_and_truncation", "read_stats", "refusal",
           "refused_marker", "submit_drift", "submit_stats"]
