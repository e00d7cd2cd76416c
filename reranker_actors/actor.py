"""The callable class Ray Data instantiates once per actor: load the model, then score batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reranker_actors.base import PassageScores, Scores, concat_scores
from reranker_actors.cache_keys import KeyLookup, pair_keys
from reranker_actors.canaries import Canaries
from reranker_actors.columns import (
    ATTENTION,
    BATCH_END,
    BATCH_START,
    BEST_PASSAGE,
    BEST_PASSAGE_CHARS,
    CAPPED,
    DOC,
    DOC_ID,
    DTYPE,
    INSTRUCTION,
    PASSAGES,
    QUERY,
    QUERY_ID,
    SCORE,
    SKIP_REASON,
    TEXTS,
    TRUNCATED,
    cache_hit_column,
    cache_key_column,
)
from reranker_actors.device import pick_device
from reranker_actors.errors import GateFailure, InputError, ModelError, UserError
from reranker_actors.faults import Faults
from reranker_actors.redact import without_texts
from reranker_actors.registry import build_reranker
from reranker_actors.restarts import check_restarts

MAX_LISTED = 5
# A batch where more than this share of rows fail alone is a broken model or device,
# not bad rows: the job stops instead of quarantining everything.
MAX_FAILING_SHARE = 0.5
MAX_REASON_CHARS = 300
NON_FINITE = "score is not finite"  # the quarantine reason of a NaN or infinite score (gates.max_nan_share)


@dataclass
class _Rows:
    """Per-row state of one batch while the actor works on it."""

    valid: np.ndarray  # bool: to be scored (no skip reason)
    reasons: list[str | None]  # skip reasons
    scores: np.ndarray  # float32
    hit: np.ndarray  # bool: the score came from the cache
    truncated: np.ndarray  # bool: the model saw the pair cut to max_length
    passages: np.ndarray  # int32: passages scored (with passages)
    best: np.ndarray  # int32: the best passage
    chars: np.ndarray  # int32 (n, 2): its [start, end) characters
    capped: np.ndarray  # bool: its document had more passages than max_per_doc

    @classmethod
    def of(cls, batch: pa.Table) -> _Rows:
        n = len(batch)
        return cls(pc.is_null(batch[SKIP_REASON]).to_numpy(zero_copy_only=False).copy(),
                   batch[SKIP_REASON].to_pylist(), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool),
                   np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32),
                   np.zeros((n, 2), dtype=np.int32), np.zeros(n, dtype=bool))

    def take(self, rows: np.ndarray, scores: Scores | PassageScores) -> None:
        """Record the scores of `rows`."""
        self.scores[rows], self.truncated[rows] = scores.values, scores.truncated
        if isinstance(scores, PassageScores):
            self.passages[rows], self.best[rows], self.chars[rows] = scores.passages, scores.best, scores.chars
            self.capped[rows] = scores.capped


def _merge(table: pa.Table, name: str, new: pa.Array, combine: Callable[[Any, Any], Any]) -> pa.Table:
    """Add column `name`, or combine it with the one an earlier scorer in the chain added."""
    if name not in table.column_names:
        return table.append_column(name, new)
    return table.set_column(table.column_names.index(name), name, combine(table[name], new))


def _process_start() -> float:
    """When this process started (Linux), else now."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except (ImportError, OSError):
        return time.time()


def _join(old: pa.ChunkedArray, new: pa.Array) -> pa.Array:
    """Comma-join two scorers' labels where they differ."""
    return pc.if_else(pc.equal(old, new), old, pc.binary_join_element_wise(old, new, ","))


class ScoreActor:
    """map_batches(ScoreActor, batch_format="pyarrow"): adds the score column (`score`,
    or a teacher's / stage's own), `_dtype`, `_truncated` and the batch's start and end
    times; drops the texts unless `keep_texts` (a later stage needs them).

    A call looks pairs up in the score cache (when given; `_key_<score column>` and
    `_hit_<score column>` record key and hit), scores the rest, isolates the rows that
    make scoring raise (by bisection: quarantined under on_invalid: skip, else the job
    stops naming them), and assembles the output batch. Rows with a skip reason are not
    scored (their score is null).
    """

    def __init__(self, reranker: dict[str, Any], expect_gpu: bool, threads: int, on_invalid: str,
                 score_column: str = SCORE, keep_texts: bool = False, cache: KeyLookup | None = None,
                 max_restarts: int = 3, canaries: dict[str, Any] | None = None, max_nan_share: float = 0.0,
                 gates_warn: bool = False, passage_columns: bool = False) -> None:
        """`cache`: where to look scores up by pair key (a CacheIndex, or the job's shards of
        one), or None. `max_restarts`: how often Ray may restart this actor after it died
        before it refuses to work. `canaries`: the fields of a Canaries, checked once the model
        has loaded. `max_nan_share`: 0 stops the job at the first NaN or infinite score; above
        0 such pairs are quarantined (the job's gate then checks their share). `gates_warn`
        (gates.mode warn): a moved canary is logged and NaN scores quarantined, never fatal.
        `passage_columns`: add passages, best_passage and best_passage_chars (reranker.passages)."""
        began = time.time()
        import torch

        torch.set_num_threads(threads)
        self.on_invalid = on_invalid
        self.score_column, self.keep_texts = score_column, keep_texts
        self.faults = Faults.from_env()
        self.failed: UserError | None = None
        self.cache = cache
        self.max_nan_share, self.gates_warn = max_nan_share, gates_warn
        self.passage_columns = passage_columns
        try:
            check_restarts(reranker.get("model", ""), max_restarts)
            self.device = pick_device(expect_gpu)
            imported = time.time()
            self.reranker = build_reranker(reranker, self.device)
            self.dtype = str(self.reranker.dtype).removeprefix("torch.")
            print(f"batch-rerank actor: {reranker.get('model')!r} on {self.device} ({self.dtype}, "
                  f"{self.reranker.attention} attention): process up {began - _process_start():.1f} s, "
                  f"torch import {imported - began:.1f} s, model load {time.time() - imported:.1f} s", flush=True)
            if canaries:
                self._check_canaries(Canaries(**canaries), score_column)
        except UserError as e:
            # Raised from __init__, Ray reports only "actor died" (and retries the load);
            # raised from the first call, the job shows this message and stops.
            self.failed = e
        if self.faults:
            self.faults.started(reranker.get("model", ""))

    def _check_canaries(self, canaries: Canaries, column: str) -> None:
        try:
            canaries.check(self.reranker, column)
        except GateFailure as e:
            if not self.gates_warn:
                raise
            print(f"batch-rerank actor: gates.mode warn, scoring anyway: {e}", flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failed is not None:
            raise self.failed
        started = time.time()
        if self.faults:
            self.faults.before_batch()
        rows = _Rows.of(batch)
        keys = self._look_up(batch, rows) if self.cache is not None else None
        failed = self._score(batch, rows)
        self._settle_failures(batch, rows, failed)
        out = self._assemble(batch, rows, keys, started)
        if self.faults:
            self.faults.left(batch[QUERY_ID].to_pylist(), batch[DOC_ID].to_pylist())
        return out

    def _title_column(self, batch: pa.Table) -> str | None:
        """passages.title's column, where the batch has it."""
        passages = self.reranker.config.passages
        title = passages.title if passages is not None else None
        return title if title and title in batch.column_names else None

    def _look_up(self, batch: pa.Table, rows: _Rows) -> pa.FixedSizeBinaryArray:
        """Take cached scores; return every row's key (an invalid row's is never looked at)."""
        def texts(column: str) -> list[str]:
            return [t if ok else "" for t, ok in zip(batch[column].to_pylist(), rows.valid, strict=True)]
        instructions = texts(INSTRUCTION) if INSTRUCTION in batch.column_names else None
        docs = texts(DOC)
        if title := self._title_column(batch):  # (the title changes the score: it is part of the key)
            docs = [f"{t or ''}\0{d}" for t, d in zip(batch[title].to_pylist(), docs, strict=True)]
        keys = pair_keys(self.dtype, texts(QUERY), docs, instructions)
        assert self.cache is not None
        hit, cached = self.cache.lookup(keys)
        rows.hit = hit & rows.valid
        if cached.dtype.names:  # (with passages: where the cached score came from, too)
            found = cached[rows.hit]
            rows.scores[rows.hit], rows.passages[rows.hit], rows.best[rows.hit] = (
                found["score"], found["passages"], found["best"])
            rows.chars[rows.hit] = np.stack([found["start"], found["end"]], axis=1)
        else:
            rows.scores[rows.hit] = cached[rows.hit]
        return keys

    def _score(self, batch: pa.Table, rows: _Rows) -> dict[int, str]:
        """Score the valid rows the cache did not have; return the rows that failed alone,
        with their reasons."""
        todo = np.flatnonzero(rows.valid & ~rows.hit)
        failed: dict[int, str] = {}
        if len(todo):
            scores = self._isolating(batch, todo, failed)
            rows.take(todo, scores)
            if isinstance(scores, PassageScores):
                self._unscorable(batch, rows, todo, scores.invalid)
            if self.faults:
                self.faults.scored(len(todo))
        return failed

    def _unscorable(self, batch: pa.Table, rows: _Rows, todo: np.ndarray, reasons: list[str | None]) -> None:
        """Pairs the reranker found invalid as it encoded them (passages: no room beside the
        prompt): an error listing them, or quarantined under on_invalid: skip."""
        bad = [(int(todo[j]), why) for j, why in enumerate(reasons) if why]
        if not bad:
            return
        if self.on_invalid != "skip":
            listed = [f"(query_id={batch[QUERY_ID][i].as_py()!r}, doc_id={batch[DOC_ID][i].as_py()!r}): {why}"
                      for i, why in bad[:MAX_LISTED]]
            raise InputError(f"{len(bad)} invalid pair(s) (showing up to {MAX_LISTED}):\n  - " + "\n  - ".join(listed)
                             + "\nFix the input, or set input.on_invalid: skip to drop such pairs and count them.")
        for i, why in bad:
            rows.valid[i], rows.reasons[i] = False, why

    def _scores_of(self, batch: pa.Table, rows: np.ndarray) -> Scores | PassageScores:
        part = batch.take(pa.array(rows))
        if self.faults:
            self.faults.check_rows(part[DOC_ID].to_pylist())
        instructions = part[INSTRUCTION].to_pylist() if INSTRUCTION in part.column_names else None
        title = self._title_column(part)
        scores = (self.reranker.score(part[QUERY].to_pylist(), part[DOC].to_pylist(), instructions,
                                      part[title].to_pylist()) if title else
                  self.reranker.score(part[QUERY].to_pylist(), part[DOC].to_pylist(), instructions))
        if self.faults:
            return scores._replace(values=self.faults.poison(part[DOC_ID].to_pylist(), scores.values))
        return scores

    def _isolating(self, batch: pa.Table, rows: np.ndarray, errors: dict[int, str]) -> Scores | PassageScores:
        """Scores of `rows`; rows that fail alone go into `errors` (score NaN), by bisection."""
        import torch

        try:
            return self._scores_of(batch, rows)
        except (UserError, MemoryError, torch.OutOfMemoryError):
            raise  # not a property of a row
        except Exception as e:  # noqa: BLE001 - isolated below, or re-raised if systemic
            if len(rows) == 1:
                errors[int(rows[0])] = self._reason(e, batch, int(rows[0]))
                nan, no = np.full(1, np.nan, dtype=np.float32), np.zeros(1, dtype=bool)
                if self.reranker.config.passages is None:
                    return Scores(nan, no)
                zero = np.zeros(1, dtype=np.int32)
                return PassageScores(nan, no, zero, zero, np.zeros((1, 2), np.int32), [None], no)
            half = len(rows) // 2
            return concat_scores([self._isolating(batch, rows[:half], errors),
                                  self._isolating(batch, rows[half:], errors)])

    @staticmethod
    def _reason(e: Exception, batch: pa.Table, row: int) -> str:
        """Why a row failed, with its texts masked: reasons go to logs and the quarantine."""
        texts = {c.strip("_"): t for c in TEXTS if c in batch.column_names and (t := batch[c][row].as_py())}
        return f"scoring failed: {type(e).__name__}: {without_texts(str(e), texts)}"[:MAX_REASON_CHARS]

    def _settle_failures(self, batch: pa.Table, rows: _Rows, failed: dict[int, str]) -> None:
        """Quarantine the rows that failed alone (on_invalid: skip), or stop naming them; stop
        on a broken model (most rows fail, or a score is NaN)."""
        scored = int((rows.valid & ~rows.hit).sum())
        listed = [f"(query_id={batch[QUERY_ID][i].as_py()!r}, doc_id={batch[DOC_ID][i].as_py()!r}): {why}"
                  for i, why in list(failed.items())[:MAX_LISTED]]
        if len(failed) > max(1, MAX_FAILING_SHARE * scored):
            raise ModelError(
                f"model {self.reranker.config.model!r} failed on {len(failed)} of {scored} pairs of a "
                "batch, each alone; that is a broken model or device, not bad rows:\n  - "
                + "\n  - ".join(listed)
            )
        if failed and self.on_invalid != "skip":
            raise InputError(
                f"{len(failed)} pair(s) make the model raise (showing up to {MAX_LISTED}):\n  - "
                + "\n  - ".join(listed)
                + "\nFix these rows, or set input.on_invalid: skip to quarantine them and finish the run."
            )
        for i, why in failed.items():
            rows.valid[i], rows.reasons[i] = False, why
        bad = ~np.isfinite(rows.scores) & rows.valid
        if not bad.any():
            return
        if not self.gates_warn and (self.max_nan_share == 0 or bad.sum() > MAX_FAILING_SHARE * scored):
            raise GateFailure(self._nan_message(batch, bad))
        for i in np.flatnonzero(bad):
            rows.valid[i], rows.reasons[i] = False, f"{NON_FINITE} ({rows.scores[i]})"

    def _nan_message(self, batch: pa.Table, bad: np.ndarray) -> str:
        rows = batch.filter(pa.array(bad)).select([QUERY_ID, DOC_ID]).slice(0, 5).to_pylist()
        cfg = self.reranker.config
        allowed = (f"more than half of a batch; gates.max_nan_share ({self.max_nan_share:g}) quarantines "
                   "a few, not a broken model" if self.max_nan_share else "gates.max_nan_share is 0")
        return (
            f"gates.max_nan_share: model {cfg.model!r} returned NaN or infinite scores for {int(bad.sum())} of "
            f"{len(batch)} pair(s) of a batch ({allowed}), e.g. {rows}; dtype {self.dtype} may overflow for "
            "this model: try reranker.dtype=float32 or bfloat16"
        )

    def _assemble(self, batch: pa.Table, rows: _Rows, keys: pa.FixedSizeBinaryArray | None,
                  started: float) -> pa.Table:
        n = len(batch)
        texts = [c for c in TEXTS if c in batch.column_names and not self.keep_texts]
        out = (batch.drop_columns([*texts, SKIP_REASON])
               .append_column(SKIP_REASON, pa.array(rows.reasons, pa.string()))
               .append_column(self.score_column, pa.array(rows.scores, mask=~rows.valid)))
        if keys is not None:
            keys = pc.if_else(pa.array(rows.valid), keys, pa.scalar(None, keys.type))  # (the next run's cache)
            out = (out.append_column(cache_key_column(self.score_column), keys)
                   .append_column(cache_hit_column(self.score_column), pa.array(rows.hit)))
        if self.passage_columns:  # (a cascade's later stage: its values where it scored, the earlier's elsewhere)
            invalid = ~rows.valid
            chars = pa.StructArray.from_arrays([pa.array(rows.chars[:, 0]), pa.array(rows.chars[:, 1])],
                                               names=["start", "end"], mask=pa.array(invalid))
            for name, new in ((PASSAGES, pa.array(rows.passages, mask=invalid)),
                              (BEST_PASSAGE, pa.array(rows.best, mask=invalid)), (BEST_PASSAGE_CHARS, chars)):
                out = _merge(out, name, new, lambda old, new: pc.if_else(pc.is_valid(new), new, old))
        # Chained scorers (distillation teachers) each add to these instead of replacing them.
        if self.reranker.config.passages is not None:
            out = _merge(out, CAPPED, pa.array(rows.capped & rows.valid), pc.or_)
        out = _merge(out, DTYPE, pa.array([self.dtype] * n, pa.string()), _join)
        out = _merge(out, ATTENTION, pa.array([self.reranker.attention] * n, pa.string()), _join)
        out = _merge(out, TRUNCATED, pa.array(rows.truncated), pc.or_)
        not_first = np.arange(n) > 0  # (the batch's times go on its first row only)
        out = _merge(out, BATCH_START, pa.array(np.full(n, started), mask=not_first),
                     lambda old, new: pc.min_element_wise(old, new, skip_nulls=True))
        return _merge(out, BATCH_END, pa.array(np.full(n, time.time()), mask=not_first),
                      lambda old, new: pc.max_element_wise(old, new, skip_nulls=True))
