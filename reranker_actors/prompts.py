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

from reranker_actors.passage_config import PassageConfig
from reranker_actors.passages import NO_ROOM, Layout, LayoutBuilder
from reranker_actors.tokenization import CHARS_PER_TOKEN_BOUND, plain_tokenizer, prefix_is_exact, title_ids


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


def _groups(ids: list[list[int]], keys: list[tuple[str, str]]) -> list[PromptGroup]:
    """The sequences of each (instruction, query), and the token prefix they all share."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for k, key in enumerate(keys):
        by_key.setdefault(key, []).append(k)
    groups = []
    for rows in by_key.values():
        seqs = [ids[k] for k in rows]
        shared = min(_common_prefix(seqs), min(map(len, seqs)) - 1) if len(rows) > 1 else 0
        groups.append(PromptGroup(np.array(rows), shared))
    return groups


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
        inst = self._instructions(instructions, len(docs))
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
        return PromptBatch(ids, _groups(ids, list(zip(inst, queries, strict=True))),
                           [len(b) > self.budget for b in bodies])

    def _instructions(self, instructions: Sequence[str | None] | None, n: int) -> list[str]:
        default = self.default_instruction
        return [i if i and i.strip() else default for i in instructions] if instructions else [default] * n

    def check_passages(self, cfg: PassageConfig) -> None:
        """At actor start: a passage fits beside the prompt's fixed parts (prefix, suffix and the
        body's own text)."""
        fixed = len(self.tok.encode(self.body.format(instruction="", query="", doc=""),
                                    add_special_tokens=True).ids)
        room = self.budget - fixed
        if cfg.length > room:
            raise ValueError(f"passages.length {cfg.length} does not fit: max_length leaves {room} tokens "
                             f"beside the prompt's fixed parts ({len(self.prefix) + len(self.suffix) + fixed} "
                             f"tokens); set passages.length to at most {max(room, 1)}")

    def encode_passages(self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None,
                        cfg: PassageConfig, titles: Sequence[str | None] | None = None
                        ) -> tuple[PromptBatch, Layout]:
        """Every pair's passages: the body tokenized as one text (as `encode` does), split where
        the document's tokens begin and end; each passage is the prompt with a window of the
        document's tokens in their place. So a document that fits is its pair's prompt exactly.
        A pair whose instruction and query leave no room is invalid (NO_ROOM). A title's tokens
        (tokenized alone) come before each window."""
        inst = self._instructions(instructions, len(docs))
        need = cfg.tokens_needed
        char_cap = need * CHARS_PER_TOKEN_BOUND + 64
        head_t, _, tail_t = self.body.partition("{doc}")
        builder = LayoutBuilder(len(docs))
        ids: list[list[int]] = []
        keys: list[tuple[str, str]] = []
        titled = title_ids(self.tok, titles, len(docs))
        for i, (instruction, query, doc, title) in enumerate(zip(inst, queries, docs, titled, strict=True)):
            head_text = head_t.format(instruction=instruction, query=query)
            tail_text = tail_t.format(instruction=instruction, query=query)
            head, body, tail = self._split(head_text, doc, tail_text, need, char_cap)
            room = self.budget - len(head) - len(tail)
            if room < 1:
                builder.invalid[i] = NO_ROOM
                continue
            d_ids = [t for t, _ in body]
            offsets = [o for _, o in body]
            for window in builder.windows(i, offsets, room, cfg, len(title)):
                ids.append(self.prefix + head + title + d_ids[window] + tail + self.suffix)
                keys.append((instruction, query))
        return PromptBatch(ids, _groups(ids, keys), [False] * len(ids)), builder.build()

    def _split(self, head_text: str, doc: str, tail_text: str, need: int, char_cap: int
               ) -> tuple[list[int], list[tuple[int, tuple[int, int]]], list[int]]:
        """The body's token ids before the document, the document's (id, its character offsets
        in the document) and those after it: one encoding of the whole body, the document cut
        by characters first where that provably leaves its first `need` tokens unchanged (only
        where the document ends the body: text after it would be tokenized after the cut)."""
        for cut in ((doc[:char_cap],) if len(doc) > char_cap and not tail_text else ()) + (doc,):
            text = head_text + cut + tail_text
            enc = self.tok.encode(text, add_special_tokens=True)
            start, end = len(head_text), len(head_text) + len(cut)
            special = enc.special_tokens_mask
            inside = [k for k, (a, b) in enumerate(enc.offsets) if not special[k] and b > start and a < end]
            first = inside[0] if inside else next((k for k, (a, _) in enumerate(enc.offsets)
                                                   if not special[k] and a >= start), len(enc.ids))
            last = inside[-1] + 1 if inside else first
            body = [(enc.ids[k], (max(enc.offsets[k][0] - start, 0), min(enc.offsets[k][1], end) - start))
                    for k in range(first, last)]
            if cut is doc or (len(body) > need and any(c.isspace() for c in cut[body[need - 1][1][1]:])):
                return enc.ids[:first], body[:need], enc.ids[last:]
        raise AssertionError("unreachable")  # (the whole document is the last try)
