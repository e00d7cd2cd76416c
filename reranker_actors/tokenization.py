"""Text -> token ids with the reranker truncation policy, using the fast (Rust) tokenizer.

Policy (as FlagReranker): the query is capped at `query_cap` tokens, the document gets
what is left of `max_length` after the query and the model's special tokens. A long
text is truncated, never an error. The special-token template (e.g. BERT's
`[CLS] q [SEP] d [SEP]`, XLM-R's `<s> q </s></s> d </s>`) is read from the tokenizer's
own post-processor, so any family works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from reranker_actors.errors import ModelError
from reranker_actors.passage_config import PassageConfig
from reranker_actors.passages import Layout, LayoutBuilder

# A token rarely spans more than a dozen characters; longer texts are cut to this many
# characters per allowed token before tokenizing, so a 1 MB document costs no more than
# a short one. The cut is verified (see _encode_capped) and undone where it could matter.
CHARS_PER_TOKEN_BOUND = 12


def plain_tokenizer(hf_tokenizer: object) -> Tokenizer:
    """A private copy of the fast tokenizer behind a transformers tokenizer, with no
    truncation or padding (tokenizer.json files often carry their own)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"{type(hf_tokenizer).__name__} has no fast (Rust) tokenizer, which this job needs; "
                         "use a model that ships a tokenizer.json")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass(frozen=True)
class Template:
    """Special tokens around one or two sequences, and their token type ids."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    prefix_types: list[int]
    middle_types: list[int]
    suffix_types: list[int]
    type_a: int
    type_b: int

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def around(self, a: list[int], b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """The ids and type ids of `a` (and `b`, a pair template) with the special tokens around."""
        if b is None:
            return self.prefix + a + self.suffix, self.prefix_types + [self.type_a] * len(a) + self.suffix_types
        return (self.prefix + a + self.middle + b + self.suffix,
                self.prefix_types + [self.type_a] * len(a) + self.middle_types + [self.type_b] * len(b)
                + self.suffix_types)


def title_ids(tok: Tokenizer, titles: Sequence[str | None] | None, n: int) -> list[list[int]]:
    """Per pair, passages.title's token ids (no special tokens; each distinct title tokenized
    once); none without titles."""
    if not titles:
        return [[]] * n
    unique = list(dict.fromkeys(t or "" for t in titles))
    of = {t: e.ids for t, e in zip(unique, tok.encode_batch(unique, add_special_tokens=False), strict=True)}
    return [of[t or ""] for t in titles]


def _read_template(tok: Tokenizer, pair: bool) -> Template:
    enc = tok.encode("a", "b" if pair else None, add_special_tokens=True)
    seq = enc.sequence_ids
    ids, types = enc.ids, enc.type_ids
    a_pos = [i for i, s in enumerate(seq) if s == 0]
    b_pos = [i for i, s in enumerate(seq) if s == 1]
    a0, a1 = a_pos[0], a_pos[-1] + 1
    b0, b1 = (b_pos[0], b_pos[-1] + 1) if b_pos else (a1, a1)
    return Template(
        prefix=ids[:a0], middle=ids[a1:b0], suffix=ids[b1:],
        prefix_types=types[:a0], middle_types=types[a1:b0], suffix_types=types[b1:],
        type_a=types[a0], type_b=types[b0] if b_pos else 0,
    )


@dataclass
class Encoded:
    """Token ids (special tokens included) and type ids of a list of inputs."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    cut: list[bool]  # whether each input lost tokens to max_length / query_cap

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


class TextEncoder:
    """Encodes single texts and (query, doc) pairs for one model's tokenizer."""

    def __init__(self, hf_tokenizer: object, max_length: int, query_cap: int) -> None:
        self.tok = plain_tokenizer(hf_tokenizer)
        self.max_length = max_length
        self.query_cap = query_cap
        self.pair = _read_template(self.tok, pair=True)
        self.single = _read_template(self.tok, pair=False)

    def _encode_capped(self, texts: Sequence[str], cap: int) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each text (no special tokens) cut to `cap`, and whether each was cut."""
        char_cap = cap * CHARS_PER_TOKEN_BOUND + 64
        inputs = [t if len(t) <= char_cap else t[:char_cap] for t in texts]
        encs: list[Encoding] = self.tok.encode_batch(inputs, add_special_tokens=False)
        ids = [e.ids for e in encs]
        for i, text in enumerate(texts):
            if len(text) > char_cap and not prefix_is_exact(encs[i], text, cap, char_cap):
                ids[i] = self.tok.encode(text, add_special_tokens=False).ids
        return [x[:cap] for x in ids], [len(x) > cap for x in ids]

    def encode_texts(self, texts: Sequence[str], max_length: int) -> Encoded:
        """Single-text inputs of at most `max_length` tokens (special tokens included)."""
        body, cut = self._encode_capped(texts, max_length - self.single.num_special)
        ids, types = zip(*map(self.single.around, body), strict=True) if body else ((), ())
        return Encoded(list(ids), list(types), cut)

    def encode_queries(self, queries: Sequence[str]) -> Encoded:
        """Queries alone (bi-encoder), capped at query_cap tokens like in pairs."""
        cap = min(self.max_length, self.query_cap + self.single.num_special)
        return self.encode_texts(queries, cap)

    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> Encoded:
        """Pair inputs: the query capped at query_cap, the doc gets the rest of max_length."""
        t = self.pair
        q_of = self._capped_queries(queries)
        room = self.max_length - t.num_special
        unique_docs = list(dict.fromkeys(docs))  # (a document is often a candidate of several queries)
        d_of = dict(zip(unique_docs, zip(*self._encode_capped(unique_docs, room), strict=True), strict=True))
        ids, types, cut = [], [], []
        for query, doc in zip(queries, docs, strict=True):
            (q, q_was_cut), (d, d_was_cut) = q_of[query], d_of[doc]
            d_room = room - len(q)
            cut.append(q_was_cut or d_was_cut or len(d) > d_room)
            pair_ids, pair_types = t.around(q, d[:d_room])
            ids.append(pair_ids)
            types.append(pair_types)
        return Encoded(ids, types, cut)

    def _capped_queries(self, queries: Sequence[str]) -> dict[str, tuple[list[int], bool]]:
        """Each distinct query's ids, capped at query_cap, and whether it was cut."""
        unique = list(dict.fromkeys(queries))
        return dict(zip(unique, zip(*self._encode_capped(unique, self.query_cap), strict=True), strict=True))


    def check_passages(self, cfg: PassageConfig, pairs: bool) -> None:
        """At actor start: a passage and (pairs) the capped query fit max_length with the
        model's special tokens."""
        t = self.pair if pairs else self.single
        room = self.max_length - t.num_special
        if cfg.length > room:
            raise ModelError(f"passages.length {cfg.length} does not fit: reranker.max_length {self.max_length} "
                             f"leaves {room} tokens beside the model's {t.num_special} special tokens; set "
                             f"passages.length to at most {room}")
        if pairs and self.query_cap >= room:
            raise ModelError(f"passages: the query cap ({self.query_cap} tokens) leaves no room for the document "
                             f"in reranker.max_length {self.max_length} ({t.num_special} special tokens); set "
                             f"reranker.query_max_length to at most {room - 1}")

    def document_encodings(self, docs: Sequence[str], cap: int) -> list[Encoding]:
        """Each document's encoding (no special tokens, with character offsets), exact in its
        first `cap` tokens; a long one is cut by characters first where that is provably exact."""
        char_cap = cap * CHARS_PER_TOKEN_BOUND + 64
        encs: list[Encoding] = self.tok.encode_batch([d[:char_cap] for d in docs], add_special_tokens=False)
        for i, doc in enumerate(docs):
            if len(doc) > char_cap and not prefix_is_exact(encs[i], doc, cap, char_cap):
                encs[i] = self.tok.encode(doc, add_special_tokens=False)
        return encs

    def encode_passages(self, queries: Sequence[str], docs: Sequence[str], cfg: PassageConfig,
                        pairs: bool = True, titles: Sequence[str | None] | None = None
                        ) -> tuple[Encoded, Layout, np.ndarray]:
        """Every pair's passages (pairs: the query, capped, then a window of the document, as
        encode_pairs composes a pair; else the window alone; a title's tokens before the
        window), their layout, and whether each pair's query was cut. Each distinct document is
        tokenized once, its windows are slices of its ids."""
        t = self.pair if pairs else self.single
        unique = list(dict.fromkeys(docs))
        encs = self.document_encodings(unique, cfg.tokens_needed)
        d_of = {d: (e.ids, e.offsets) for d, e in zip(unique, encs, strict=True)}
        q_of = self._capped_queries(queries) if pairs else {}
        builder = LayoutBuilder(len(docs))
        ids, types, q_cut = [], [], np.zeros(len(docs), dtype=bool)
        for i, (doc, title) in enumerate(zip(docs, title_ids(self.tok, titles, len(docs)), strict=True)):
            q, q_cut[i] = q_of[queries[i]] if pairs else ([], False)
            d_ids, offsets = d_of[doc]
            for window in builder.windows(i, offsets, self.max_length - t.num_special - len(q), cfg, len(title)):
                d = title + d_ids[window]
                passage_ids, passage_types = t.around(q, d) if pairs else t.around(d)
                ids.append(passage_ids)
                types.append(passage_types)
        layout = builder.build()
        return Encoded(ids, types, q_cut[layout.owner].tolist()), layout, q_cut


def prefix_is_exact(enc: Encoding, text: str, cap: int, char_cap: int) -> bool:
    """Whether the first `cap` tokens of text[:char_cap] equal those of the whole text.

    They do when whitespace lies between the end of token `cap` and the cut: every
    tokenizer family here (WordPiece, SentencePiece/Metaspace, byte-level BPE) splits
    words at whitespace before subword tokenization, so the cut only changes later words.
    Text without whitespace (e.g. long Chinese) is tokenized whole instead.
    """
    if len(enc.ids) <= cap:
        return False
    end = enc.offsets[cap - 1][1]
    return any(c.isspace() for c in text[end:char_cap])
