"""LLM rerankers that judge a pair by the probability of answering "yes" (Qwen3-Reranker).

The default prompt, instruction and score are the Qwen3-Reranker model card's
(transformers variant): score = softmax([logit(no), logit(yes)])[yes] at the last
position = sigmoid(yes - no). Other yes/no LLM rerankers are configured through the
template and token strings; `negative_token: null` scores by the yes logit alone.

Efficiency, with the same numbers as the card's code:
  - only the last position's hidden state is used, multiplied by the two LM-head rows
    for yes/no; the full-vocabulary logits are never computed;
  - batches under a token budget that mix queries: on CUDA with a varlen kernel packed
    without padding (reranker_actors.packing), elsewhere length-bucketed and padded to
    the longest in the bucket;
  - on the CPU, the tokens that all candidates of a query share (system prompt,
    instruction, query) are run once and their KV cache is reused for every candidate's
    remaining tokens. On a GPU recomputing them in packed batches is faster (the cache
    copies per candidate cost more than the recomputed FLOPs: docs/performance.md);
  - the device is synchronised once per call, not per batch.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from reranker_actors.base import PassageScores, RerankerConfig, Scores, activate, inference_mode
from reranker_actors.batching import ahead, host_slices, pad, to_device, token_budget_batches
from reranker_actors.errors import ModelError
from reranker_actors.hf import HFReranker
from reranker_actors.packing import pack, packed_batches
from reranker_actors.passage_config import PassageConfig
from reranker_actors.passages import Layout, aggregated
from reranker_actors.prompts import PromptBatch, PromptEncoder

if TYPE_CHECKING:
    import torch

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PLACEHOLDERS = {"instruction", "query", "doc"}


class LLMYesNoConfig(RerankerConfig):
    backend: Literal["llm_yes_no"] = "llm_yes_no"
    max_length: int = Field(8192, ge=8, description="Tokens per prompt, prefix and suffix included.")
    activation: Literal["raw", "sigmoid"] = Field(
        "sigmoid", description="sigmoid: P(yes) as on the model card; raw: logit(yes) - logit(no)."
    )
    prefix: str = QWEN3_PREFIX
    body: str = Field(QWEN3_BODY, description="Python format string with {query}, {doc}, {instruction}.")
    suffix: str = QWEN3_SUFFIX
    instruction: str = Field(QWEN3_INSTRUCTION, description="Default task instruction.")
    positive_token: str = "yes"
    negative_token: str | None = Field("no", description="null: score by the positive token's logit alone.")

    @field_validator("body")
    @classmethod
    def _body_fields(cls, v: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as e:
            raise ValueError(f"not a valid format string ({e}); write literal braces as {{{{ }}}}") from e
        if not {"query", "doc"} <= names or not names <= PLACEHOLDERS:
            raise ValueError(f"must contain {{query}} and {{doc}} and may contain {{instruction}}; found {names}")
        return v

    @model_validator(mode="after")
    def _no_query_cap(self) -> LLMYesNoConfig:
        if self.query_max_length is not None:
            raise ValueError("query_max_length does not apply to llm_yes_no: as on the model card, the "
                             "prompt body is cut from the end (the document) to fit max_length")
        return self


def _token_id(tokenizer: Any, token: str, key: str, model: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ModelError(f"reranker.{key} {token!r} is not a token of model {model!r}'s vocabulary")
    return int(tid)


# Qwen3-Reranker-{0.6B,4B,8B} fine-tune Qwen3-{0.6B,4B,8B}-Base (model cards) and keep their
# config.json shapes (num_hidden_layers, hidden_size, intermediate_size, attention and KV heads, head_dim).
QWEN3 = dict(kv_heads=8, head_dim=128, gated=True)


class LLMYesNoReranker(HFReranker):
    config_class = LLMYesNoConfig
    auto_class = "AutoModelForCausalLM"
    raw_score = "logit"  # logit(yes) - logit(no)
    takes_instruction = True
    known_models: ClassVar[dict[str, dict[str, Any]]] = {
        "Qwen/Qwen3-Reranker-0.6B": QWEN3 | dict(layers=28, hidden=1024, intermediate=3072, heads=16, params=0.6e9),
        "Qwen/Qwen3-Reranker-4B": QWEN3 | dict(layers=36, hidden=2560, intermediate=9728, heads=32, params=4.0e9),
        "Qwen/Qwen3-Reranker-8B": QWEN3 | dict(layers=36, hidden=4096, intermediate=12288, heads=32, params=8.2e9),
    }
    config: LLMYesNoConfig
    encoder: PromptEncoder

    def __init__(self, config: LLMYesNoConfig, device: torch.device) -> None:
        super().__init__(config, device)
        tokens = [config.positive_token] + ([config.negative_token] if config.negative_token else [])
        keys = ["positive_token", "negative_token"]
        ids = [_token_id(self.tokenizer, t, k, config.model) for t, k in zip(tokens, keys[:len(tokens)], strict=True)]
        self.decoder = self.model.get_decoder()
        # The two LM-head rows that matter, as a (hidden, 1 or 2) matrix in float32.
        self.head = self.model.get_output_embeddings().weight[ids].detach().float().T.contiguous()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)

    def can_pack(self) -> bool:
        return not getattr(self.model.config, "use_sliding_window", False)

    def make_encoder(self, tokenizer: Any) -> PromptEncoder:
        c = self.config
        try:
            return PromptEncoder(tokenizer, c.prefix, c.body, c.suffix, c.instruction, c.max_length)
        except ValueError as e:
            raise ModelError(f"reranker.max_length: {e}") from e

    def _last_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        import torch

        logits = hidden.float() @ self.head.to(hidden.device)
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def _run(self, seqs: list[list[int]], offset: int = 0, cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
             ) -> torch.Tensor:
        """Logits of the last token of each sequence (right-padded), optionally after a shared
        prefix of `offset` tokens whose per-layer (key, value) tensors are `cache`."""
        import torch
        from transformers import DynamicCache

        ids = pad(seqs, self.pad_id)
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        positions = np.broadcast_to(offset + np.arange(ids.shape[1]), ids.shape).copy()
        kwargs: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            rows = len(seqs)
            mask = np.concatenate([np.ones((rows, offset), dtype=np.int64), mask], axis=1)
            kwargs = {"past_key_values": DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                                       for k, v in cache]), "use_cache": True}
        out = self.decoder(input_ids=to_device(ids, self.device), attention_mask=to_device(mask, self.device),
                           position_ids=to_device(positions, self.device), **kwargs)
        last = to_device(lengths - 1, self.device)  # (pinned: a pageable copy would wait for the GPU)
        return self._last_logits(out.last_hidden_state[torch.arange(len(seqs), device=self.device), last])

    def _run_packed(self, seqs: list[list[int]]) -> torch.Tensor:
        """Logits of the last token of each sequence, run padding-free in one packed row."""
        packed = pack(seqs, self.device)
        out = self.decoder(**packed.inputs, use_cache=False)
        return self._last_logits(out.last_hidden_state[0, packed.last])

    def _score_shared(self, batch: PromptBatch, rows: np.ndarray, shared: int,
                      done: list[tuple[np.ndarray, torch.Tensor]], offset: int) -> None:
        """Run the group's common prefix once, then every candidate's remaining tokens on its cache."""
        from transformers import DynamicCache

        prefix = batch.ids[rows[0]][:shared]
        ran = self.decoder(input_ids=to_device(np.array([prefix]), self.device), use_cache=True,
                           past_key_values=DynamicCache(config=self.model.config))
        cache = [(layer.keys, layer.values) for layer in ran.past_key_values.layers]
        rests = [batch.ids[k][shared:] for k in rows]
        lengths = np.fromiter((shared + len(r) for r in rests), dtype=np.int64, count=len(rests))
        for idx in token_budget_batches(lengths, self.max_tokens):
            done.append((rows[idx] + offset, self._run([rests[i] for i in idx], shared, cache)))

    @inference_mode
    def logits(self, queries: Sequence[str], docs: Sequence[str],
               instructions: Sequence[str | None] | None = None, share_prefix: bool | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) logits of [yes, no] (or (n, 1) of yes) at each prompt's last position, and
        whether each prompt's body was cut to fit max_length. `share_prefix`: run a query's
        common prefix once (default: on the CPU, where it pays; never with packing)."""

        share = self._shares_prefix(share_prefix)
        done: list[tuple[np.ndarray, torch.Tensor]] = []  # (rows, logits left on the device)
        cut = np.zeros(len(queries), dtype=bool)
        parts = host_slices(len(queries), self.device)
        encoded = ahead(lambda p: self.encoder.encode(queries[p], docs[p], instructions[p] if instructions else None),
                        parts)
        for part, batch in zip(parts, encoded, strict=True):
            cut[part] = batch.cut
            self._enqueue(batch, share, done, part.start)
        return self._gathered(done, len(queries)), cut

    def _shares_prefix(self, share_prefix: bool | None = None) -> bool:
        """Whether a query's common prefix runs once (default: on the CPU, where it pays; never
        with packing)."""
        return (self.device.type == "cpu" if share_prefix is None else share_prefix) and not self.packed

    def _gathered(self, done: list[tuple[np.ndarray, torch.Tensor]], n: int) -> np.ndarray:
        """The (n, 1 or 2) logits launched in `done` (rows, logits on the device), in row order:
        the device's one sync of the call."""
        import torch

        out = np.empty((n, self.head.shape[1]), dtype=np.float32)
        if done:
            out[np.concatenate([rows for rows, _ in done])] = torch.cat([t for _, t in done]).cpu().numpy()
        return out

    def _enqueue(self, batch: PromptBatch, share: bool, done: list[tuple[np.ndarray, torch.Tensor]],
                 offset: int) -> None:
        """Launch the forward passes of one encoded slice; `offset`: its first row in the call."""
        alone = []
        for group in batch.groups:
            if share and group.shared > 0:
                self._score_shared(batch, group.rows, group.shared, done, offset)
            else:
                alone += group.rows.tolist()
        alone_rows = np.array(alone, dtype=np.int64)
        batches = packed_batches if self.packed else token_budget_batches
        run = self._run_packed if self.packed else self._run
        for idx in batches(batch.lengths[alone_rows], self.max_tokens):
            done.append((alone_rows[idx] + offset, run([batch.ids[k] for k in alone_rows[idx]])))

    def check_passages(self, passages: PassageConfig) -> None:
        try:
            self.encoder.check_passages(passages)
        except ValueError as e:
            raise ModelError(str(e)) from e

    @inference_mode
    def passage_logits(self, queries: Sequence[str], docs: Sequence[str],
                       instructions: Sequence[str | None] | None = None,
                       titles: Sequence[str | None] | None = None) -> tuple[np.ndarray, Layout]:
        """Logits of every passage (as `logits`), and which pair each belongs to."""

        assert self.config.passages is not None
        batch, layout = self.encoder.encode_passages(queries, docs, instructions, self.config.passages, titles)
        done: list[tuple[np.ndarray, torch.Tensor]] = []
        self._enqueue(batch, self._shares_prefix(), done, 0)
        return self._gathered(done, len(batch.ids)), layout

    def score(self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None,
              titles: Sequence[str | None] | None = None) -> Scores | PassageScores:
        passages = self.config.passages
        if passages is not None:
            logits, layout = self.passage_logits(queries, docs, instructions, titles)
            return aggregated(_margin(logits), layout, passages, self.config.activation, np.zeros(len(docs), bool))
        logits, truncated = self.logits(queries, docs, instructions)
        return Scores(activate(_margin(logits), self.config.activation), truncated)


def _margin(logits: np.ndarray) -> np.ndarray:
    """logit(yes) - logit(no), or logit(yes) without a negative token."""
    return logits[:, 0] - logits[:, 1] if logits.shape[1] == 2 else logits[:, 0]
