"""Long documents as passages: windows of a document's own token ids, each scored with the
query as a short document would be, the pair's score their aggregate (Dai & Callan, SIGIR
2019: FirstP, MaxP; PyTerrier's max/first/mean/kmaxavg_passage).

Windows start at document tokens 0, stride, 2*stride, ...; the last is the first whose end
(start + length) reaches the document's end, so a document of at most `length` tokens is
one passage. Where a pair's query leaves less room than `length`, its windows are as long
as the room and its stride at most that. `max_per_doc` caps the passages of one document:
the rest are not scored, and the pair counts as truncated.

The aggregate is taken over the raw scores (logits, cosines); the activation comes after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reranker_actors.base import PassageScores, activate
from reranker_actors.passage_config import PassageConfig, window_starts

NO_ROOM = "the prompt leaves no room for the document (passages): the query and instruction fill max_length"
TITLE_FILLS = "passages.title: the title fills the passage and leaves no room for the document"


@dataclass
class Layout:
    """Which pair each passage belongs to, and where in its document it lies."""

    owner: np.ndarray  # int64 per passage: the pair it belongs to
    chars: np.ndarray  # int32 (passages, 2): its [start, end) character offsets in the document
    capped: np.ndarray  # bool per pair: max_per_doc left passages out
    invalid: list[str | None]  # per pair: why it cannot be split (llm_yes_no: no room), else None


class LayoutBuilder:
    """Collects the passages of a batch of pairs, pair by pair."""

    def __init__(self, pairs: int) -> None:
        self.owner: list[int] = []
        self.chars: list[tuple[int, int]] = []
        self.capped = np.zeros(pairs, dtype=bool)
        self.invalid: list[str | None] = [None] * pairs

    def windows(self, pair: int, offsets: list[tuple[int, int]], room: int, cfg: PassageConfig,
                title: int = 0) -> list[slice]:
        """The token slices of pair `pair`'s windows, given its document's token offsets, the
        room its query leaves and its title's tokens (which the window makes room for); each is
        recorded with its character span. None fit: the pair is invalid (TITLE_FILLS)."""
        length = min(cfg.length, room) - title
        if length < 1:
            self.invalid[pair] = TITLE_FILLS
            return []
        starts, self.capped[pair] = window_starts(len(offsets), length, min(cfg.step, length), cfg.max_per_doc)
        slices = [slice(s, min(s + length, len(offsets))) for s in starts]
        for cut in slices:
            span = offsets[cut]
            self.owner.append(pair)
            self.chars.append((span[0][0], span[-1][1]) if span else (0, 0))
        return slices

    def build(self) -> Layout:
        return Layout(np.array(self.owner, dtype=np.int64), np.array(self.chars, dtype=np.int32).reshape(-1, 2),
                      self.capped, self.invalid)


def aggregated(raw: np.ndarray, layout: Layout, cfg: PassageConfig, activation: str,
               truncated: np.ndarray) -> PassageScores:
    """Per pair: the aggregate of its passages' raw scores, activated; how many were scored;
    the best one's index and character span. Pairs without passages (invalid) score NaN."""
    pairs = len(layout.capped)
    counts = np.bincount(layout.owner, minlength=pairs)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # Passages come pair by pair: each pair's are one contiguous run of `raw`.
    values = np.full(pairs, np.nan, dtype=np.float64)
    best = np.zeros(pairs, dtype=np.int32)
    for i in np.flatnonzero(counts):
        mine = raw[starts[i]:starts[i] + counts[i]].astype(np.float64)
        best[i] = int(np.argmax(mine))
        if cfg.aggregate == "max":
            values[i] = mine[best[i]]
        elif cfg.aggregate == "first":
            values[i] = mine[0]
        elif cfg.aggregate == "mean":
            values[i] = mine.mean()
        else:
            values[i] = np.sort(mine)[::-1][:cfg.k].mean()
    chars = np.zeros((pairs, 2), dtype=np.int32)
    has = counts > 0
    chars[has] = layout.chars[starts[has] + best[has]]
    return PassageScores(activate(values.astype(np.float32), activation), truncated | layout.capped,
                  counts.astype(np.int32), best, chars, layout.invalid, layout.capped)
