"""The callable class Ray Data instantiates once per actor: load the model, then score batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.errors import ModelError
from jobs.schema import DOC, DOC_ID, QUERY, QUERY_ID, SCORE, SKIP_REASON
from reranker_actors.device import pick_device
from reranker_actors.registry import build_reranker


class ScoreActor:
    """map_batches(ScoreActor, batch_format="pyarrow"): adds `score`, drops the texts.

    Rows with a skip reason are not scored (their score is null).
    """

    def __init__(self, reranker: dict[str, Any], expect_gpu: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = pick_device(expect_gpu)
        self.reranker = build_reranker(reranker, self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_null(batch[SKIP_REASON]).to_numpy(zero_copy_only=False)
        scores = np.zeros(len(batch), dtype=np.float32)
        if valid.any():
            rows = batch.filter(pa.array(valid)) if not valid.all() else batch
            scores[valid] = self.reranker.score(rows[QUERY].to_pylist(), rows[DOC].to_pylist())
            nan = np.isnan(scores) & valid
            if nan.any():
                raise ModelError(self._nan_message(batch, nan))
        score = pa.array(scores, mask=~valid)
        return batch.drop_columns([QUERY, DOC]).append_column(SCORE, score)

    def _nan_message(self, batch: pa.Table, nan: np.ndarray) -> str:
        rows = batch.filter(pa.array(nan)).select([QUERY_ID, DOC_ID]).slice(0, 5).to_pylist()
        cfg = self.reranker.config
        return (
            f"model {cfg.model!r} returned NaN scores for {int(nan.sum())} pair(s), e.g. {rows}; "
            f"dtype {cfg.dtype} may overflow for this model; try reranker.dtype=float32 or bfloat16"
        )
