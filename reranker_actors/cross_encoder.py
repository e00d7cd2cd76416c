"""Cross-encoders: one forward pass per (query, doc) pair, one relevance logit out.

Covers AutoModelForSequenceClassification with a single label: the BERT family
(cross-encoder/ms-marco-MiniLM-L-6-v2) and XLM-R (BAAI/bge-reranker-v2-m3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from jobs.errors import ModelError
from reranker_actors.base import Reranker, RerankerConfig, activate
from reranker_actors.batching import model_inputs, token_budget_batches
from reranker_actors.device import resolve_dtype
from reranker_actors.hf_loading import load_pretrained
from reranker_actors.tokenization import TextEncoder


class CrossEncoderConfig(RerankerConfig):
    backend: Literal["cross_encoder"] = "cross_encoder"


class CrossEncoderReranker(Reranker):
    config_class = CrossEncoderConfig

    def __init__(self, config: CrossEncoderConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.dtype = resolve_dtype(config.dtype, device)
        tokenizer, self.model = load_pretrained(
            config, AutoModelForSequenceClassification, device, self.dtype
        )
        if self.model.config.num_labels != 1:
            raise ModelError(
                f"model {config.model!r} has {self.model.config.num_labels} output labels; "
                "backend cross_encoder needs a single-logit reranker head (num_labels=1)"
            )
        self.encoder = TextEncoder(tokenizer, config.max_length, config.query_cap)
        self.pad_id = tokenizer.pad_token_id
        self.with_type_ids = "token_type_ids" in tokenizer.model_input_names
        self._truncated = 0

    @property
    def truncated(self) -> int:
        return self._truncated

    @torch.inference_mode()
    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        enc = self.encoder.encode_pairs(queries, docs)
        self._truncated += sum(enc.cut)
        types = enc.type_ids if self.with_type_ids else None
        out = np.empty(len(enc.ids), dtype=np.float32)
        for idx in token_budget_batches(enc.lengths, self.config.max_tokens_per_batch):
            inputs = model_inputs(enc.ids, types, idx, self.pad_id, self.device)
            out[idx] = self.model(**inputs).logits[:, 0].float().cpu().numpy()
        return activate(out, self.config.activation)
