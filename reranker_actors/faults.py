"""Fault injection for tests only: makes an actor die, stall, or fail on a row, on purpose.

Enabled by the environment variable BATCH_RERANK_TEST_FAULTS holding JSON, e.g.
    {"sleep_per_batch": 0.5}                       slow every batch down
    {"kill_on_call": 2, "marker_dir": "/tmp/f"}    the actor process exits on its 2nd call,
                                                   once per marker_dir across all actors
    {"raise_on_doc_id": "d7"}                      scoring raises for any batch holding d7
    {"nan_on_doc_ids": ["d3", "d9"]}               the model returns NaN for these documents
    {"count_file": "/tmp/n"}                       each batch appends how many pairs it scored
    {"resources_file": "/tmp/r"}                   each actor appends its model and the Ray
                                                   resources it was given (a JSON line)
    {"batch_log": "/tmp/b"}                        each batch appends, as it leaves the actor, a
                                                   JSON line: {"end": unix time, "pairs":
                                                   [[query_id, doc_id], ...]}
The job forwards the variable to its workers (runtime_env). Unset, nothing here runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ENV = "BATCH_RERANK_TEST_FAULTS"


class InjectedFault(ValueError):
    """The error a row named by raise_on_doc_id makes scoring raise."""


@dataclass
class Faults:
    sleep_per_batch: float = 0.0
    kill_on_call: int | None = None
    marker_dir: str | None = None
    raise_on_doc_id: str | None = None
    nan_on_doc_ids: list[str] | None = None
    count_file: str | None = None
    resources_file: str | None = None
    batch_log: str | None = None
    calls: int = 0

    @classmethod
    def from_env(cls) -> Faults | None:
        raw = os.environ.get(ENV)
        return cls(**json.loads(raw)) if raw else None

    def started(self, model: str) -> None:
        if self.resources_file is not None:
            import ray

            given = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
            with open(self.resources_file, "a") as f:
                f.write(json.dumps({"model": model, "resources": given}) + "\n")

    def before_batch(self) -> None:
        self.calls += 1
        if self.sleep_per_batch:
            time.sleep(self.sleep_per_batch)
        if self.kill_on_call == self.calls and self._first_kill():
            os._exit(17)  # as abrupt as an OOM kill: no cleanup, no exception

    def _first_kill(self) -> bool:
        if self.marker_dir is None:
            return True
        try:
            os.close(os.open(os.path.join(self.marker_dir, "killed"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def check_rows(self, doc_ids: Sequence[str]) -> None:
        if self.raise_on_doc_id is not None and self.raise_on_doc_id in doc_ids:
            raise InjectedFault(f"injected failure for doc_id {self.raise_on_doc_id!r}")

    def poison(self, doc_ids: Sequence[str], values: np.ndarray) -> np.ndarray:
        """The model's scores, with NaN for the documents nan_on_doc_ids names."""
        if not self.nan_on_doc_ids:
            return values
        bad = np.isin(np.asarray(doc_ids, dtype=object), self.nan_on_doc_ids)
        return np.where(bad, np.float32(np.nan), values).astype(values.dtype)

    def scored(self, pairs: int) -> None:
        if self.count_file is not None:
            with open(self.count_file, "a") as f:  # one short append per batch: atomic enough
                f.write(f"{pairs}\n")

    def left(self, query_ids: Sequence[str], doc_ids: Sequence[str]) -> None:
        """A batch is about to leave the actor (its output is assembled)."""
        if self.batch_log is not None:
            line = json.dumps({"end": time.time(), "pairs": list(zip(query_ids, doc_ids, strict=True))})
            with open(self.batch_log, "a") as f:  # (one write per line: lines of one actor never interleave)
                f.write(line + "\n")
