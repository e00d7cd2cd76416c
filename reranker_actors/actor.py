"""The callable class Ray Data instantiates once per actor: load the model, then score batches."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.errors import InputError, ModelError, UserError
from jobs.schema import (
    BATCH_END,
    BATCH_START,
    DOC,
    DOC_ID,
    DTYPE,
    INSTRUCTION,
    QUERY,
    QUERY_ID,
    SCORE,
    SKIP_REASON,
    TRUNCATED,
)
from reranker_actors.device import pick_device
from reranker_actors.faults import Faults
from reranker_actors.registry import build_reranker

MAX_LISTED = 5
# A batch where more than this share of rows fail alone is a broken model or device,
# not bad rows: the job stops instead of quarantining everything.
MAX_FAILING_SHARE = 0.5


MAX_REASON_CHARS = 300


def _without_texts(e: Exception, batch: pa.Table, row: int) -> str:
    """The error message with the row's texts masked: reasons end up in logs and the
    quarantine, which must carry ids, never query or document texts."""
    message = str(e)
    for column in (QUERY, DOC, INSTRUCTION):
        if column in batch.column_names and (text := batch[column][row].as_py()):
            message = message.replace(text, f"<{column.strip('_')}>")
    return message[:MAX_REASON_CHARS]


class ScoreActor:
    """map_batches(ScoreActor, batch_format="pyarrow"): adds `score`, `_dtype`,
    `_truncated` and the batch's start and end times, drops the texts.

    Rows with a skip reason are not scored (their score is null). A row that makes
    scoring raise is found by bisection and, under on_invalid: skip, gets the error as
    its skip reason; under on_invalid: error the job stops naming it.
    """

    def __init__(self, reranker: dict[str, Any], expect_gpu: bool, threads: int, on_invalid: str) -> None:
        torch.set_num_threads(threads)
        self.on_invalid = on_invalid
        self.faults = Faults.from_env()
        self.failed: UserError | None = None
        try:
            self.device = pick_device(expect_gpu)
            self.reranker = build_reranker(reranker, self.device)
        except UserError as e:
            # Raised from __init__, Ray reports only "actor died" (and retries the load);
            # raised from the first call, the job shows this message and stops.
            self.failed = e

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failed is not None:
            raise self.failed
        started = time.time()
        if self.faults:
            self.faults.before_batch()
        valid = pc.is_null(batch[SKIP_REASON]).to_numpy(zero_copy_only=False)
        reasons = batch[SKIP_REASON].to_pylist()
        scores = np.zeros(len(batch), dtype=np.float32)
        truncated_before = self.reranker.truncated
        if valid.any():
            rows = np.flatnonzero(valid)
            errors: dict[int, str] = {}
            scores[rows] = self._isolating(batch, rows, errors)
            if self.faults:
                self.faults.scored(len(rows))
            if errors:
                self._quarantine_or_raise(batch, errors, len(rows))
                for i, why in errors.items():
                    valid[i], reasons[i] = False, why
            nan = np.isnan(scores) & valid
            if nan.any():
                raise ModelError(self._nan_message(batch, nan))
        truncated = np.zeros(len(batch), dtype=np.int32)
        truncated[:1] = self.reranker.truncated - truncated_before
        first_row = np.arange(len(batch)) > 0  # (mask: the times go on the first row only)
        texts = [c for c in (QUERY, DOC, INSTRUCTION) if c in batch.column_names]
        dtype = str(self.reranker.dtype).removeprefix("torch.")
        return (batch.drop_columns([*texts, SKIP_REASON])
                .append_column(SKIP_REASON, pa.array(reasons, pa.string()))
                .append_column(SCORE, pa.array(scores, mask=~valid))
                .append_column(DTYPE, pa.array([dtype] * len(batch), pa.string()))
                .append_column(TRUNCATED, pa.array(truncated))
                .append_column(BATCH_START, pa.array(np.full(len(batch), started), mask=first_row))
                .append_column(BATCH_END, pa.array(np.full(len(batch), time.time()), mask=first_row)))

    def _score(self, batch: pa.Table, rows: np.ndarray) -> np.ndarray:
        part = batch.take(pa.array(rows))
        if self.faults:
            self.faults.check_rows(part[DOC_ID].to_pylist())
        instructions = part[INSTRUCTION].to_pylist() if INSTRUCTION in part.column_names else None
        return self.reranker.score(part[QUERY].to_pylist(), part[DOC].to_pylist(), instructions)

    def _isolating(self, batch: pa.Table, rows: np.ndarray, errors: dict[int, str]) -> np.ndarray:
        """Scores of `rows`; rows that fail alone go into `errors` (score NaN), by bisection."""
        try:
            return self._score(batch, rows)
        except (UserError, MemoryError, torch.OutOfMemoryError):
            raise  # not a property of a row
        except Exception as e:  # noqa: BLE001 - isolated below, or re-raised if systemic
            if len(rows) == 1:
                errors[int(rows[0])] = f"scoring failed: {type(e).__name__}: {_without_texts(e, batch, int(rows[0]))}"
                return np.full(1, np.nan, dtype=np.float32)
            half = len(rows) // 2
            return np.concatenate([self._isolating(batch, rows[:half], errors),
                                   self._isolating(batch, rows[half:], errors)])

    def _quarantine_or_raise(self, batch: pa.Table, errors: dict[int, str], scored: int) -> None:
        listed = [f"(query_id={batch[QUERY_ID][i].as_py()!r}, doc_id={batch[DOC_ID][i].as_py()!r}): {why}"
                  for i, why in list(errors.items())[:MAX_LISTED]]
        if len(errors) > max(1, MAX_FAILING_SHARE * scored):
            raise ModelError(
                f"model {self.reranker.config.model!r} failed on {len(errors)} of {scored} pairs of a "
                "batch, each alone; that is a broken model or device, not bad rows:\n  - "
                + "\n  - ".join(listed)
            )
        if self.on_invalid == "skip":
            return
        raise InputError(
            f"{len(errors)} pair(s) make the model raise (showing up to {MAX_LISTED}):\n  - "
            + "\n  - ".join(listed)
            + "\nFix these rows, or set input.on_invalid: skip to quarantine them and finish the run."
        )

    def _nan_message(self, batch: pa.Table, nan: np.ndarray) -> str:
        rows = batch.filter(pa.array(nan)).select([QUERY_ID, DOC_ID]).slice(0, 5).to_pylist()
        cfg = self.reranker.config
        return (
            f"model {cfg.model!r} returned NaN scores for {int(nan.sum())} pair(s), e.g. {rows}; "
            f"dtype {cfg.dtype} may overflow for this model; try reranker.dtype=float32 or bfloat16"
        )
