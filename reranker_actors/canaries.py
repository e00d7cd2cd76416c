"""Canary pairs: a few pairs with the scores a known-good run gave them, scored again by
every actor right after its model loads and before its first batch. A wrong model,
revision, template or dtype then stops the job in its first minute (jobs.canaries writes
the file; jobs.gates checks it is readable before any work starts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reranker_actors.base import Reranker
from reranker_actors.errors import GateFailure

MAX_SHOWN = 5


@dataclass(frozen=True)
class Canaries:
    """What an actor needs to check itself: plain lists (passed by value to the actor)."""

    source: str  # the file, for the message
    queries: list[str]
    docs: list[str]
    instructions: list[str] | None
    scores: list[float]  # the recorded scores of this actor's score column
    tolerance: float
    titles: list[str] | None = None  # passages.title's text per pair, where the job has one

    def check(self, reranker: Reranker, column: str) -> None:
        """Score the canaries; raise GateFailure naming the pairs that moved past the tolerance."""
        scored = (reranker.score(self.queries, self.docs, self.instructions, self.titles) if self.titles is not None
                  else reranker.score(self.queries, self.docs, self.instructions))
        got = scored.values.astype(np.float64)
        want = np.asarray(self.scores, dtype=np.float64)
        delta = np.abs(got - want)
        bad = np.flatnonzero(~(delta <= self.tolerance))  # (NaN counts as moved)
        if not len(bad):
            return
        worst = bad[np.argsort(-np.nan_to_num(delta[bad], nan=np.inf))][:MAX_SHOWN]
        shown = "\n  - ".join(f"canary row {i}: recorded {want[i]:.6g}, scored now {got[i]:.6g} "
                              f"(|diff| {delta[i]:.3g})" for i in worst)
        cfg = reranker.config
        raise GateFailure(
            f"canaries: {len(bad)} of {len(want)} canary pair(s) in {self.source} scored more than "
            f"gates.canary_tolerance ({self.tolerance:g}) from their recorded {column!r}, before any input "
            f"was scored; model {cfg.model!r} (revision {cfg.revision or 'default'}, dtype "
            f"{str(reranker.dtype).removeprefix('torch.')}) is not "
            f"the model, revision, template or dtype the canaries were recorded with:\n  - {shown}\n"
            "Fix the model settings, or record the canaries again from a run you trust (python -m jobs.canaries)."
        )
