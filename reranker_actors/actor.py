"""The callable class Ray Data instantiates once per actor: load the model, then score batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.errors import ModelError, UserError
from jobs.schema import DOC, DOC_ID, DTYPE, INSTRUCTION, QUERY, QUERY_ID, SCORE, SKIP_REASON
from reranker_actors.device import pick_device
from reranker_actors.registry import build_reranker


class ScoreActor:
    """map_batches(ScoreActor, batch_format="pyarrow"): adds `score` and `_dtype`, drops the texts.

    Rows with a skip reason are not scored (their score is null).
    """

    def __init__(self, reranker: dict[str, Any], expect_gpu: bool, threads: int) -> None:
        torch.set_num_threads(threads)
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
        valid = pc.is_null(batch[SKIP_REASON]).to_numpy(zero_copy_only=False)
        scores = np.zeros(len(batch), dtype=np.float32)
        if valid.any():
            rows = batch.filter(pa.array(valid)) if not valid.all() else batch
            instructions = rows[INSTRUCTION].to_pylist() if INSTRUCTION in rows.column_names else None
            scores[valid] = self.reranker.score(rows[QUERY].to_pylist(), rows[DOC].to_pylist(), instructions)
            nan = np.isnan(scores) & valid
            if nan.any():
                raise ModelError(self._nan_message(batch, nan))
        score = pa.array(scores, mask=~valid)
        texts = [c for c in (QUERY, DOC, INSTRUCTION) if c in batch.column_names]
        dtype = str(self.reranker.dtype).removeprefix("torch.")
        return (batch.drop_columns(texts).append_column(SCORE, score)
                .append_column(DTYPE, pa.array([dtype] * len(batch), pa.string())))

    def _nan_message(self, batch: pa.Table, nan: np.ndarray) -> str:
        rows = batch.filter(pa.array(nan)).select([QUERY_ID, DOC_ID]).slice(0, 5).to_pylist()
        cfg = self.reranker.config
        return (
            f"model {cfg.model!r} returned NaN scores for {int(nan.sum())} pair(s), e.g. {rows}; "
            f"dtype {cfg.dtype} may overflow for this model; try reranker.dtype=float32 or bfloat16"
        )
