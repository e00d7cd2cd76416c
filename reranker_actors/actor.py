"""The callable class Ray Data instantiates once per actor: load the model, then score batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
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
    cache_hit_column,
    cache_key_column,
)
from jobs.score_cache import pair_keys
from reranker_actors.device import pick_device
from reranker_actors.faults import Faults
from reranker_actors.registry import build_reranker

MAX_LISTED = 5
# A batch where more than this share of rows fail alone is a broken model or device,
# not bad rows: the job stops instead of quarantining everything.
MAX_FAILING_SHARE = 0.5


MAX_REASON_CHARS = 300


def _merge(table: pa.Table, name: str, new: pa.Array, combine: Callable[[Any, Any], Any]) -> pa.Table:
    if name not in table.column_names:
        return table.append_column(name, new)
    return table.set_column(table.column_names.index(name), name, combine(table[name], new))


def _without_texts(e: Exception, batch: pa.Table, row: int) -> str:
    """The error message with the row's texts masked: reasons end up in logs and the
    quarantine, which must carry ids, never query or document texts."""
    message = str(e)
    for column in (QUERY, DOC, INSTRUCTION):
        if column in batch.column_names and (text := batch[column][row].as_py()):
            message = message.replace(text, f"<{column.strip('_')}>")
    return message[:MAX_REASON_CHARS]


class ScoreActor:
    """map_batches(ScoreActor, batch_format="pyarrow"): adds the score column (`score`,
    or a teacher's / stage's own), `_dtype`, `_truncated` and the batch's start and end
    times; drops the texts unless `keep_texts` (a later stage needs them).

    With a score cache, pairs whose key is in it take the cached score and are not
    scored; `_key_<score column>` and `_hit_<score column>` record key and hit.

    Rows with a skip reason are not scored (their score is null). A row that makes
    scoring raise is found by bisection and, under on_invalid: skip, gets the error as
    its skip reason; under on_invalid: error the job stops naming it.
    """

    def __init__(self, reranker: dict[str, Any], expect_gpu: bool, threads: int, on_invalid: str,
                 score_column: str = SCORE, keep_texts: bool = False, cache: Any = None) -> None:
        """`cache`: an ObjectRef of a jobs.score_cache.CacheIndex (or the index), or None."""
        torch.set_num_threads(threads)
        self.on_invalid = on_invalid
        self.score_column, self.keep_texts = score_column, keep_texts
        self.faults = Faults.from_env()
        self.failed: UserError | None = None
        self.cache = ray.get(cache) if isinstance(cache, ray.ObjectRef) else cache
        try:
            self.device = pick_device(expect_gpu)
            self.reranker = build_reranker(reranker, self.device)
        except UserError as e:
            # Raised from __init__, Ray reports only "actor died" (and retries the load);
            # raised from the first call, the job shows this message and stops.
            self.failed = e
        if self.faults:
            self.faults.started(reranker.get("model", ""))

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failed is not None:
            raise self.failed
        started = time.time()
        if self.faults:
            self.faults.before_batch()
        valid = pc.is_null(batch[SKIP_REASON]).to_numpy(zero_copy_only=False)
        reasons = batch[SKIP_REASON].to_pylist()
        scores = np.zeros(len(batch), dtype=np.float32)
        hit = np.zeros(len(batch), dtype=bool)
        dtype = str(self.reranker.dtype).removeprefix("torch.")
        keys = self._keys(batch, valid, dtype) if self.cache is not None else None
        if keys is not None:
            hit, cached = self.cache.lookup(keys)
            hit &= valid
            scores[hit] = cached[hit]
        truncated_before = self.reranker.truncated
        if (valid & ~hit).any():
            rows = np.flatnonzero(valid & ~hit)
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
        texts = [c for c in (QUERY, DOC, INSTRUCTION) if c in batch.column_names and not self.keep_texts]
        out = (batch.drop_columns([*texts, SKIP_REASON])
               .append_column(SKIP_REASON, pa.array(reasons, pa.string()))
               .append_column(self.score_column, pa.array(scores, mask=~valid)))
        if keys is not None:
            keys = pc.if_else(pa.array(valid), keys, pa.scalar(None, keys.type))  # (the next run's cache)
            out = (out.append_column(cache_key_column(self.score_column), keys)
                   .append_column(cache_hit_column(self.score_column), pa.array(hit)))
        # Chained scorers (distillation teachers) each add to these instead of replacing them.
        out = _merge(out, DTYPE, pa.array([dtype] * len(batch), pa.string()),
                     lambda old, new: pc.if_else(pc.equal(old, new), old, pc.binary_join_element_wise(old, new, ",")))
        out = _merge(out, TRUNCATED, pa.array(truncated), pc.add)
        out = _merge(out, BATCH_START, pa.array(np.full(len(batch), started), mask=first_row),
                     lambda old, new: pc.min_element_wise(old, new, skip_nulls=True))
        return _merge(out, BATCH_END, pa.array(np.full(len(batch), time.time()), mask=first_row),
                      lambda old, new: pc.max_element_wise(old, new, skip_nulls=True))

    def _keys(self, batch: pa.Table, valid: np.ndarray, dtype: str) -> pa.FixedSizeBinaryArray:
        """Cache keys of every row (invalid rows get a key too; it is never looked at)."""
        def texts(column: str) -> list[str]:
            return [t if ok else "" for t, ok in zip(batch[column].to_pylist(), valid)]
        instructions = texts(INSTRUCTION) if INSTRUCTION in batch.column_names else None
        return pair_keys(dtype, texts(QUERY), texts(DOC), instructions)

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
