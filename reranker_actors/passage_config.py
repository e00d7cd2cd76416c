"""The `passages:` settings (reranker_actors.passages scores by them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PassageConfig(BaseModel):
    """passages: score long documents as overlapping windows of their tokens."""

    model_config = ConfigDict(extra="forbid")

    length: int = Field(ge=1, description="Document tokens per passage, in the model's own tokens.")
    stride: int | None = Field(None, ge=1, description="Tokens from one passage's start to the next; "
                               "default length // 2 (at least 1).")
    max_per_doc: int = Field(64, ge=1, description="Passages scored per document at most; the rest are "
                             "not scored, and the run reports how many documents hit the cap.")
    aggregate: Literal["max", "first", "mean", "kmaxavg"] = Field(
        "max", description="max (MaxP), first (FirstP), mean, or kmaxavg (mean of the k best).")
    k: int = Field(3, ge=1, description="kmaxavg: how many of the best passages are averaged.")
    title: str | None = Field(None, description="An input column whose text is prepended to every passage; "
                              "its tokens count inside the window, which shrinks by as many.")

    @property
    def step(self) -> int:
        return self.stride or max(1, self.length // 2)

    @property
    def tokens_needed(self) -> int:
        """A document's tokens that can matter: its windows' (at most max_per_doc of the widest
        kind), and one more to tell that the cap left some out."""
        return (self.max_per_doc - 1) * self.step + self.length + 1


def window_starts(n: int, length: int, stride: int, cap: int) -> tuple[range, bool]:
    """The start tokens of a document's windows of `length` (n tokens), at most `cap` of
    them, and whether the cap left some out."""
    count = 1 if n <= length else -(-(n - length) // stride) + 1
    return range(0, min(count, cap) * stride, stride), count > cap
