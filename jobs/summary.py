"""The run report: `_run_report.json` next to the output, and the one-screen text a run
ends with (also `_run_report.txt`). It holds ids, counts and settings, never texts or
credentials."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import asdict, dataclass, field

LIBRARIES = ("batch-rerank", "ray", "torch", "transformers", "pyarrow", "s3fs", "fsspec")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class RunSummary:
    ray: str
    input: str
    input_files: list[dict]  # url, size, rows of every input file
    pairs: int  # pairs read (nested rows exploded; a query without candidates counts 1)
    skipped: int  # pairs not scored: invalid input or scoring failed; all quarantined
    quarantined: int  # rows written to _quarantine/
    truncated: int  # scored pairs whose query or doc was cut to max_length
    queries: int
    rows_out: int
    output: str
    files_out: int
    model: str
    revision: str | None
    backend: str
    dtype: str
    config_hash: str
    resumed_pairs: int = 0  # pairs taken from an earlier run's checkpoints
    scored_now: int = 0  # pairs this run sent through the model
    run_id: str = ""
    score_startup_s: float = 0.0  # score stage start -> first batch begins (actors up, models loaded)
    score_steady_pairs_per_s: float = 0.0  # pairs/s from the first batch's start to the last's end
    cached: int = 0  # pairs whose score came from the score cache
    by_file: bool = False  # each query's pairs were in one input file: ranked file by file, no shuffle
    cache: str | None = None  # the score cache's namespace directory, when one is used
    cache_entries: int = 0  # pairs the cache held when the run started
    attention: str = ""  # packed (padding-free) or padded, as the scoring actors ran it
    stages: list[dict] = field(default_factory=list)  # cascade: per stage model, backend, top_n, pairs, cached, resumed
    passages: int = 0  # with passages: passages scored for the pairs (the rerank job)
    passages_capped: int = 0  # with passages: pairs whose document had more than passages.max_per_doc
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> mean metrics
    eval_queries: int = 0
    gates: dict = field(default_factory=dict)  # jobs.gates.GateResults.as_dict(): every figure, threshold, verdict
    gate_lines: list[str] = field(default_factory=list)  # the same, as the summary prints it
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def scored(self) -> int:
        return self.pairs - self.skipped

    def pairs_per_s(self) -> dict[str, float]:
        """Per stage: pairs handled per second (score: pairs this run scored)."""
        handled = {"score": self.scored_now, "rank": self.scored, "cascade + rank": self.scored}
        return {stage: round(handled[stage] / s, 2) for stage, s in self.seconds.items()
                if stage in handled and s > 0}

    def counts(self) -> dict[str, object]:
        """The counts a person looks at first (the HTML report's table)."""
        out: dict[str, object] = {
            "input files": len(self.input_files), "pairs read": self.pairs, "pairs scored": self.scored,
            "scored by the model in this run": self.scored_now, "taken from the score cache": self.cached,
            "skipped (quarantined)": self.skipped, "truncated": self.truncated, "queries": self.queries,
            "rows out": self.rows_out, "model": self.model, "dtype": self.dtype,
            "pairs/s (score stage)": self.pairs_per_s().get("score", 0.0),
        }
        out |= {f"stage {s['stage']} pairs ({s['model']})": s["pairs"] for s in self.stages}
        return out | {f"{stage} seconds": s for stage, s in self.seconds.items()}

    def to_dict(self) -> dict:
        out = {**asdict(self), "scored": self.scored, "pairs_per_s": self.pairs_per_s()}
        del out["gate_lines"]
        return out

    def render(self) -> str:
        score_s = self.seconds.get("score", 0.0)
        rate = self.pairs_per_s().get("score", 0.0)
        resumed = f", {self.resumed_pairs} pairs resumed from checkpoints" if self.resumed_pairs else ""
        refused = bool(self.gates.get("refused"))
        verdict = "ran, and the quality gates refused it," if refused else "finished"
        where = (f"nothing published at {self.output}; staged in {self.output}/_staging/{self.run_id}/"
                 if refused else str(self.output))
        lines = [
            f"batch-rerank {verdict} in {sum(self.seconds.values()):.1f} s on {self.ray}",
            f"  input     {self.input} ({len(self.input_files)} file(s){resumed})",
            f"  queries   {self.queries:,}",
            f"  pairs     {self.pairs:,} read, {self.scored:,} scored ({self.scored_now:,} in this run), "
            f"{self.skipped:,} skipped, {self.truncated:,} truncated",
            f"  model     {self.model} ({self.backend}, dtype {self.dtype}, {self.attention or 'padded'} attention)",
            *([f"  passages  {self.passages:,} scored, {self.passages / max(self.scored, 1):.2f} per pair; "
               f"{self.passages_capped:,} document(s) past passages.max_per_doc (their tail not scored)"]
              if self.passages else []),
            f"  speed     {rate:,.1f} pairs/s over the score stage ({score_s:.1f} s); "
            f"{self.score_steady_pairs_per_s:,.1f} pairs/s once the actors were up "
            f"({self.score_startup_s:.1f} s start-up)",
            "  stages    " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
            + ("; ranked file by file (no query spans two input files)" if self.by_file else
               "; ranked after a shuffle by query_id"),
            f"  output    {where} ({self.rows_out:,} rows in {self.files_out} file(s))",
        ]
        if self.cache:
            lines.append(f"  cache     {self.cached:,} pair(s) from the score cache ({self.cache_entries:,} entries "
                         f"in {self.cache}), {self.scored_now:,} scored by the model")
        for stage in self.stages:
            which = f"top {stage['top_n']} per query" if stage["top_n"] else "all pairs"
            cached = f", {stage['cached']:,} from the score cache" if self.cache else ""
            cached += f", {stage['resumed']:,} resumed from an earlier attempt" if stage.get("resumed") else ""
            lines.append(f"  stage {stage['stage']}   {stage['model']} ({stage['backend']}): "
                         f"{stage['pairs']:,} pairs ({which}{cached})")
        if self.quarantined:
            lines.append(f"  quarantine {self.quarantined:,} pair(s) with reasons in {self.output}/_quarantine/")
        for stage, m in self.metrics.items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items())
            lines.append(f"  eval      {stage}: {shown}  ({self.eval_queries} queries with qrels)")
        lines += [f"  {line}" for line in self.gate_lines]
        return "\n".join(lines)
