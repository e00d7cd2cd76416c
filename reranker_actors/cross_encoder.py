"""Cross-encoders: one forward pass per (query, doc) pair, one relevance logit out.

Covers AutoModelForSequenceClassification with a single label: the BERT family
(cross-encoder/ms-marco-MiniLM-L-6-v2) and XLM-R (BAAI/bge-reranker-v2-m3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from reranker_actors.base import RerankerConfig, Scores, activate, inference_mode
from reranker_actors.batching import host_slices, token_budget_batches
from reranker_actors.errors import ModelError
from reranker_actors.hf import HFReranker

if TYPE_CHECKING:
    import torch


class CrossEncoderConfig(RerankerConfig):
    backend: Literal["cross_encoder"] = "cross_encoder"


# Architecture shapes, from each model's config.json on the Hugging Face hub.
XLMR_LARGE = dict(layers=24, hidden=1024, intermediate=4096, heads=16, params=568e6)
MINILM_L6 = dict(layers=6, hidden=384, intermediate=1536, heads=12, params=22.7e6)


class CrossEncoderReranker(HFReranker):
    config_class = CrossEncoderConfig
    auto_class = "AutoModelForSequenceClassification"
    raw_score = "logit"
    known_models: ClassVar[dict[str, dict[str, Any]]] = {
        "BAAI/bge-reranker-v2-m3": XLMR_LARGE, "cross-encoder/ms-marco-MiniLM-L-6-v2": MINILM_L6}

    def __init__(self, config: CrossEncoderConfig, device: torch.device) -> None:
        super().__init__(config, device)
        if self.model.config.num_labels != 1:
            raise ModelError(
                f"model {config.model!r} has {self.model.config.num_labels} output labels; "
                "backend cross_encoder needs a single-logit reranker head (num_labels=1)"
            )

    @inference_mode
    def score(self, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> Scores:
        import torch

        rows, logits = [], []  # logits stay on the device: the host never waits mid-call
        truncated = np.zeros(len(queries), dtype=bool)
        for part in host_slices(len(queries), self.device):
            enc = self.encoder.encode_pairs(queries[part], docs[part])
            truncated[part] = enc.cut
            for idx in token_budget_batches(enc.lengths, self.max_tokens):
                logits.append(self.model(**self.inputs(enc, idx)).logits[:, 0])
                rows.append(idx + part.start)
        out = np.empty(len(queries), dtype=np.float32)
        if rows:
            out[np.concatenate(rows)] = torch.cat(logits).float().cpu().numpy()
        return Scores(activate(out, self.config.activation), truncated)
