"""Prompt token ids for LLM rerankers, exactly as the Qwen3-Reranker model card builds them.

The card (transformers variant): body = template.format(instruction, query, doc),
tokenized as one text; the body alone is truncated from the right to
max_length - len(prefix) - len(suffix) tokens; then prefix + body + suffix. So the
suffix (which ends where the model answers) is never cut.

Pairs with the same (instruction, query) share the start of their token sequence: the
system prefix, the instruction and the query. `PromptBatch.groups` names those pairs and
the length of the token prefix they all share, so the model can compute it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reranker_actors.tokenization import CHARS_PER_TOKEN_BOUND, plain_tokenizer, prefix_is_exact


@dataclass
class PromptGroup:
    rows: np.ndarray  # pair indices with the same (instruction, query)
    shared: int  # tokens at the start that all their sequences have in common


@dataclass
class PromptBatch:
    ids: list[list[int]]  # prefix + body + suffix, per pair
    groups: list[PromptGroup]
    cut: list[bool]  # whether the body was truncated

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


class PromptEncoder:
    def __init__(self, hf_tokenizer: object, prefix: str, body: str, suffix: str,
                 default_instruction: str, max_length: int) -> None:
        self.tok = plain_tokenizer(hf_tokenizer)
        self.prefix = self.tok.encode(prefix, add_special_tokens=False).ids
        self.suffix = self.tok.encode(suffix, add_special_tokens=False).ids
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise ValueError(
                f"max_length {max_length} leaves no room for the prompt body: the prefix and suffix "
                f"alone take {len(self.prefix) + len(self.suffix)} tokens"
            )
        self.body = body
        self.default_instruction = default_instruction
        # Long documents are cut (by characters, verified) before tokenizing; only possible
        # when the document ends the body.
        self.doc_last = body.endswith("{doc}")

    def encode(self, queries: Sequence[str], docs: Sequence[str],
               instructions: Sequence[str | None] | None = None) -> PromptBatch:
        """Token ids of every pair's prompt; an empty or missing instruction means the default."""
        default = self.default_instruction
        inst = [i if i and i.strip() else default for i in instructions] if instructions else [default] * len(docs)
        char_cap = self.budget * CHARS_PER_TOKEN_BOUND + 64
        precut = [self.doc_last and len(d) > char_cap for d in docs]
        texts = [self.body.format(instruction=i, query=q, doc=d[:char_cap] if c else d)
                 for i, q, d, c in zip(inst, queries, docs, precut, strict=True)]
        encs = self.tok.encode_batch(texts, add_special_tokens=True)
        bodies = [e.ids for e in encs]
        for k in (k for k, c in enumerate(precut) if c):
            if not prefix_is_exact(encs[k], texts[k], self.budget, len(texts[k])):
                full = self.body.format(instruction=inst[k], query=queries[k], doc=docs[k])
                bodies[k] = self.tok.encode(full, add_special_tokens=True).ids
        ids = [self.prefix + b[: self.budget] + self.suffix for b in bodies]
        by_key: dict[tuple[str, str], list[int]] = {}
        for k, key in enumerate(zip(inst, queries, strict=True)):
            by_key.setdefault(key, []).append(k)
        groups = []
        for rows in by_key.values():
            seqs = [ids[k] for k in rows]
            shared = min(_common_prefix(seqs), min(map(len, seqs)) - 1) if len(rows) > 1 else 0
            groups.append(PromptGroup(np.array(rows), shared))
        return PromptBatch(ids, groups, [len(b) > self.budget for b in bodies])
