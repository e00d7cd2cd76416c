"""The one-screen summary a run ends with (also stored in the _SUCCESS marker)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RunSummary:
    ray: str
    input: str
    input_files: int
    pairs: int
    skipped: int
    queries: int
    rows_out: int
    output: str
    files_out: int
    model: str
    backend: str
    dtype: str
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> mean metrics
    eval_queries: int = 0

    @property
    def scored(self) -> int:
        return self.pairs - self.skipped

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        score_s = self.seconds.get("score", 0.0)
        rate = self.scored / score_s if score_s > 0 else 0.0
        lines = [
            f"batch-rerank finished in {sum(self.seconds.values()):.1f} s on {self.ray}",
            f"  input     {self.input} ({self.input_files} file(s))",
            f"  queries   {self.queries:,}",
            f"  pairs     {self.pairs:,} read, {self.scored:,} scored, {self.skipped:,} skipped as invalid",
            f"  model     {self.model} ({self.backend}, dtype {self.dtype})",
            f"  speed     {rate:,.1f} pairs/s over the score stage ({score_s:.1f} s)",
            "  stages    " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()),
            f"  output    {self.output} ({self.rows_out:,} rows in {self.files_out} file(s))",
        ]
        for stage, m in self.metrics.items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items())
            lines.append(f"  eval      {stage}: {shown}  ({self.eval_queries} queries with qrels)")
        return "\n".join(lines)
