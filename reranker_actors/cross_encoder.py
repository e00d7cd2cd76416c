"""Cross-encoders: one forward pass per (query, doc) pair, one relevance logit out.

Covers AutoModelForSequenceClassification with a single label: the BERT family
(cross-encoder/ms-marco-MiniLM-L-6-v2) and XLM-R (BAAI/bge-reranker-v2-m3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from reranker_actors.base import PassageScores, RerankerConfig, Scores, activate, inference_mode
from reranker_actors.batching import ahead, host_slices, token_budget_batches
from reranker_actors.errors import ModelError
from reranker_actors.hf import HFReranker
from reranker_actors.packing import packed_batches
from reranker_actors.passages import aggregated
from reranker_actors.tokenization import Encoded

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

    def can_pack(self) -> bool:
        return classification_head(self.model) is not None

    def _logits(self, enc: Any, idx: np.ndarray) -> torch.Tensor:
        """Logits of rows `idx`, left on the device."""
        if not self.packed:
            return self.model(**self.inputs(enc, idx)).logits[:, 0]
        packed = self.packed_inputs(enc, idx)
        hidden = self.model.base_model(**packed.inputs).last_hidden_state[0]
        head = classification_head(self.model)
        assert head is not None
        return head(hidden[packed.starts].unsqueeze(1))[:, 0]

    def _forward(self, parts: list[slice], encoded: Iterable[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits of every encoded row (`encoded`: one Encoded per slice of `parts`,
        produced as they are consumed) and whether each was cut."""
        import torch

        rows, logits = [], []  # logits stay on the device: the host never waits mid-call
        n = sum(p.stop - p.start for p in parts)
        cut = np.zeros(n, dtype=bool)
        for part, enc in zip(parts, encoded, strict=True):
            cut[part] = enc.cut
            batches = packed_batches if self.packed else token_budget_batches
            for idx in batches(enc.lengths, self.max_tokens):
                logits.append(self._logits(enc, idx))
                rows.append(idx + part.start)
        out = np.empty(n, dtype=np.float32)
        if rows:
            out[np.concatenate(rows)] = torch.cat(logits).float().cpu().numpy()
        return out, cut

    @inference_mode
    def score(self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None,
              titles: Sequence[str | None] | None = None) -> Scores | PassageScores:
        if self.config.passages is not None:
            enc, layout, cut = self.encoder.encode_passages(queries, docs, self.config.passages, titles=titles)
            raw, _ = self._forward([slice(0, len(enc.ids))], [enc])
            return aggregated(raw, layout, self.config.passages, self.config.activation, cut)
        parts = host_slices(len(queries), self.device)
        raw, cut = self._forward(parts, ahead(lambda part: self.encoder.encode_pairs(queries[part], docs[part]), parts))
        return Scores(activate(raw, self.config.activation), cut)


def classification_head(model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The sequence-classification head of `model` as a function of the first token's hidden
    state, shaped (n, 1, hidden), for the padding-free path; None for a head it doesn't know.

    BERT: pooler (dense + tanh on the first token), dropout, linear. RoBERTa/XLM-R: a
    classification head that reads the first token itself.
    """
    classifier = getattr(model, "classifier", None)
    pooler = getattr(model.base_model, "pooler", None)
    if classifier is None:
        return None
    if hasattr(classifier, "out_proj") and pooler is None:
        return classifier
    if pooler is not None and hasattr(model, "dropout") and hasattr(classifier, "weight"):
        return lambda first: classifier(model.dropout(pooler(first)))
    return None
