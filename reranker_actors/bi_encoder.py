"""Bi-encoders: embed query and doc separately, score by cosine similarity.

AutoModel with mean or CLS pooling, e.g. sentence-transformers/all-MiniLM-L6-v2.
Each distinct query text in a batch is embedded once, not once per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from reranker_actors.base import PassageScores, RerankerConfig, Scores, activate, inference_mode
from reranker_actors.batching import to_device, token_budget_batches
from reranker_actors.cross_encoder import MINILM_L6
from reranker_actors.hf import HFReranker
from reranker_actors.passage_config import PassageConfig
from reranker_actors.passages import aggregated
from reranker_actors.tokenization import Encoded

if TYPE_CHECKING:
    import torch


class BiEncoderConfig(RerankerConfig):
    backend: Literal["bi_encoder"] = "bi_encoder"
    pooling: Literal["mean", "cls"] = "mean"


class BiEncoderReranker(HFReranker):
    config_class = BiEncoderConfig
    auto_class = "AutoModel"
    raw_score = "cosine"
    # all-MiniLM-L6-v2's config.json on the Hugging Face hub.
    known_models: ClassVar[dict[str, dict[str, Any]]] = {
        "sentence-transformers/all-MiniLM-L6-v2": MINILM_L6, "all-MiniLM-L6-v2": MINILM_L6}
    config: BiEncoderConfig

    def _embed(self, enc: Encoded) -> torch.Tensor:
        """L2-normalised float32 embeddings, one row per encoded text."""
        import torch
        import torch.nn.functional as F

        out = torch.empty(len(enc.ids), self.model.config.hidden_size, dtype=torch.float32, device=self.device)
        for idx in token_budget_batches(enc.lengths, self.max_tokens):
            inputs = self.inputs(enc, idx)
            hidden = self.model(**inputs).last_hidden_state.float()
            if self.config.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[to_device(idx, self.device)] = F.normalize(pooled, dim=-1)  # (on the device: one sync per call)
        return out

    def check_passages(self, passages: PassageConfig) -> None:
        self.encoder.check_passages(passages, pairs=False)

    @inference_mode
    def score(self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None,
              titles: Sequence[str | None] | None = None) -> Scores | PassageScores:

        unique = list(dict.fromkeys(queries))
        position = {q: i for i, q in enumerate(unique)}
        q_enc = self.encoder.encode_queries(unique)
        which = np.array([position[q] for q in queries], dtype=np.int64)
        q_cut = np.array(q_enc.cut, dtype=bool)[which]
        passages = self.config.passages
        if passages is not None:  # (each passage embedded alone, as a short document would be)
            d_enc, layout, _ = self.encoder.encode_passages(queries, docs, passages, pairs=False, titles=titles)
            which = which[layout.owner]
        else:
            d_enc = self.encoder.encode_texts(docs, self.config.max_length)
        scores = (self._embed(q_enc)[to_device(which, self.device)] * self._embed(d_enc)).sum(-1).cpu().numpy()
        if passages is not None:
            return aggregated(scores, layout, passages, self.config.activation, q_cut)
        return Scores(activate(scores, self.config.activation), q_cut | np.array(d_enc.cut, dtype=bool))
