"""Score-cache keys and lookups, as the scoring actor uses them.

A pair's key is a 128-bit BLAKE2b of the dtype the actor resolved, the pair's task
instruction, query and document (each length-prefixed), so another dtype or a changed
text never hits. Everything else a score depends on (model, revision, template, ...)
names the cache's namespace instead: `namespace_settings`. The job (jobs.score_cache)
stores, publishes and serves the cache (by key range, jobs.cache_shards); the actor only
looks keys up in a `KeyLookup`: a `CacheIndex`, or the job's shards of one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from reranker_actors.base import RerankerConfig
from reranker_actors.registry import score_settings

KEY_TYPE = pa.binary(16)
# A cached value with passages (reranker_actors.passages): the score and where it came from.
PASSAGE_VALUE = np.dtype([("score", np.float32), ("passages", np.int32), ("best", np.int32), ("start", np.int32),
                          ("end", np.int32)])


def value_dtype(passages: bool) -> np.dtype:
    """What a lookup returns per key: a float32 score, or with passages a PASSAGE_VALUE."""
    return PASSAGE_VALUE if passages else np.dtype(np.float32)


def cache_values(table: pa.Table) -> np.ndarray:
    """The values of cache rows (score, and passages, best_passage, best_passage_chars where
    the table has them), as value_dtype gives them."""
    score = table["score"].to_numpy().astype(np.float32) if len(table) else np.empty(0, np.float32)
    if "best_passage_chars" not in table.column_names:
        return score
    out = np.empty(len(table), PASSAGE_VALUE)
    chars = table["best_passage_chars"].combine_chunks() if len(table) else None
    out["score"] = score
    for name, column in (("passages", table["passages"]), ("best", table["best_passage"])):
        out[name] = column.to_numpy() if len(table) else []
    if chars is not None:
        out["start"], out["end"] = chars.field("start").to_numpy(), chars.field("end").to_numpy()
    return out


def namespace_settings(reranker: RerankerConfig | dict[str, Any]) -> dict[str, Any]:
    """What a cached score depends on besides its key: the reranker's score settings
    without the dtype, which `auto` resolves per device and so goes into each key."""
    return {k: v for k, v in score_settings(reranker).items() if k != "dtype"}


def pair_keys(dtype: str, queries: Sequence[str], docs: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> pa.FixedSizeBinaryArray:
    """128-bit keys of (dtype, instruction, query, doc); each part length-prefixed."""
    head = _part(dtype)
    out = bytearray()
    for i, (query, doc) in enumerate(zip(queries, docs, strict=True)):
        h = hashlib.blake2b(head, digest_size=16)
        h.update(_part((instructions[i] if instructions else None) or ""))
        h.update(_part(query))
        h.update(_part(doc))
        out += h.digest()
    return pa.FixedSizeBinaryArray.from_buffers(KEY_TYPE, len(docs), [None, pa.py_buffer(bytes(out))])


def _part(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "little") + data


class KeyLookup(Protocol):
    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, scores) for `keys`; scores are 0 where not found."""
        ...


def key_halves(keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
    """Each key's first and last 64 bits, as uint64 (views of the key buffer)."""
    raw = np.frombuffer(keys.buffers()[1], dtype="<u8", count=2 * (len(keys) + keys.offset))
    pairs = raw.reshape(-1, 2)[keys.offset:]
    return pairs[:, 0], pairs[:, 1]


@dataclass
class CacheIndex:
    """Sorted distinct keys (as two uint64 halves) and their values (value_dtype): lookups
    by binary search. A key given twice keeps its first row's value."""

    hi: np.ndarray
    lo: np.ndarray
    score: np.ndarray  # float32, or PASSAGE_VALUE records

    @classmethod
    def from_table(cls, table: pa.Table) -> CacheIndex:
        keys = table["key"].combine_chunks() if len(table) else pa.array([], KEY_TYPE)
        hi, lo = key_halves(keys)
        order = np.lexsort((np.arange(len(hi)), lo, hi))
        hi, lo = hi[order], lo[order]
        first = np.ones(len(hi), dtype=bool)
        first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        return cls(np.ascontiguousarray(hi[first]), np.ascontiguousarray(lo[first]), cache_values(table)[order][first])

    def __len__(self) -> int:
        return len(self.hi)

    def lookup(self, keys: pa.FixedSizeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, values) for `keys`; values are 0 where not found."""
        hi, lo = key_halves(keys)
        found = np.zeros(len(keys), dtype=bool)
        scores = np.zeros(len(keys), dtype=self.score.dtype)
        if not len(self.hi):
            return found, scores
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        single = np.flatnonzero(right - left == 1)
        match = self.lo[left[single]] == lo[single]
        found[single[match]], scores[single[match]] = True, self.score[left[single[match]]]
        for i in np.flatnonzero(right - left > 1):  # (several entries share `hi` only by a 64-bit collision)
            at = left[i] + np.flatnonzero(self.lo[left[i]:right[i]] == lo[i])
            if len(at):
                found[i], scores[i] = True, self.score[at[0]]
        return found, scores
