"""Training files from the per-query labels of `jobs.labels.label_queries`.

- `flag_embedding_records`: FlagEmbedding's reranker fine-tuning JSONL (`write_jsonl` writes it);
- `cross_encoder_table`: (query, doc, label) pairs for sentence-transformers' CrossEncoderTrainer.

Every function takes the nested table (one row per query) and is vectorised over it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import ConfigError
from jobs.labels import (
    CANDIDATES,
    COMBINED,
    DEFAULT_PROMPT,
    DOC,
    HARD_NEGATIVE,
    POSITIVE,
    QUERY,
    SOFT_LABEL,
)

# FlagEmbedding's reranker record, one JSON object per line. Field names and what is done
# with them: FlagEmbedding/abc/finetune/reranker/AbsDataset.py (AbsRerankerTrainDataset,
# AbsLLMRerankerTrainDataset) and examples/finetune/reranker/README.md "Data format", FlagOpen/FlagEmbedding:
# - `query`, `pos`, `neg` are required; each example takes 1 random `pos` and train_group_size - 1
#   random `neg` (sampled with repetition when there are fewer), so both lists must be non-empty;
# - `pos_scores` / `neg_scores` (parallel to `pos` / `neg`) are read only with
#   `--knowledge_distillation True` (and then required; otherwise the columns are dropped). The
#   group's teacher scores go through softmax at temperature 1 (AbsRerankerModel.forward in
#   AbsModeling.py) and the student is trained on cross-entropy with the positive as the label
#   plus -sum(softmax(teacher) * log_softmax(student)). So they must be logit-scale scores;
# - `prompt` is appended to every (query, passage) input of the LLM (decoder-only) rerankers;
#   the encoder-only dataset ignores it.
FLAG_SCHEMA = pa.schema([
    ("query", pa.string()), ("pos", pa.list_(pa.string())), ("neg", pa.list_(pa.string())),
    ("pos_scores", pa.list_(pa.float64())), ("neg_scores", pa.list_(pa.float64())), ("prompt", pa.string()),
])


@dataclass(frozen=True)
class FlagEmbeddingRecords:
    """The records, and how many queries were left out for lack of a positive / a hard negative."""

    table: pa.Table
    dropped_no_positive: int
    dropped_no_negative: int

    @property
    def dropped(self) -> int:
        return self.dropped_no_positive + self.dropped_no_negative


def _flat(nested: pa.Table) -> tuple[pa.StructArray, np.ndarray]:
    """All candidates (query after query, each in teacher-rank order) and each one's query row."""
    lists = nested[CANDIDATES].combine_chunks()
    return lists.flatten(), pc.list_parent_indices(lists).to_numpy()


def _flag(flat: pa.StructArray, name: str) -> np.ndarray:
    return flat.field(name).fill_null(False).to_numpy(zero_copy_only=False)


def _lists(values: pa.Array, parent: np.ndarray, mask: np.ndarray, rows: int) -> pa.ListArray:
    """`values[mask]` as one list per row of the output (`parent` maps each value to its row)."""
    sizes = np.bincount(parent[mask], minlength=rows)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32()),
                                    values.filter(pa.array(mask)))


def flag_embedding_records(nested: pa.Table, score: str = COMBINED, prompt: str = DEFAULT_PROMPT,
                           temperature: float = 1.0) -> FlagEmbeddingRecords:
    """FlagEmbedding reranker records: `pos` = positive doc texts, `neg` = hard-negative doc
    texts (both in teacher-rank order), `pos_scores` / `neg_scores` = their `score` field
    (`combined` by default, or a teacher's raw score) divided by `temperature`.

    With score="combined" from `combine: zscore` and `temperature` = the LabelsConfig's, the
    softmax FlagEmbedding takes over a sampled group equals our soft labels renormalised over
    that group. (`combine: probability` scores lie in [0, 1], which that softmax flattens to
    near-uniform targets: prefer zscore, or a logit teacher's raw score, for distillation.)
    Queries without a positive or without a hard negative are left out and counted.
    """
    flat, parent = _flat(nested)
    scores = [f.name for f in flat.type if pa.types.is_floating(f.type) and f.name != SOFT_LABEL]
    if score not in scores:
        raise ConfigError(f"score {score!r} is not a candidate score; use one of: {', '.join(scores)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    pos, neg = _flag(flat, POSITIVE), _flag(flat, HARD_NEGATIVE)
    rows = len(nested)
    has_pos = np.bincount(parent[pos], minlength=rows) > 0
    has_neg = np.bincount(parent[neg], minlength=rows) > 0
    keep = has_pos & has_neg
    renumber = np.cumsum(keep) - 1  # a kept query's row in the output
    values = pc.divide(pc.cast(flat.field(score), pa.float64()), temperature)
    doc = flat.field(DOC)

    def lists(values: pa.Array, mask: np.ndarray) -> pa.ListArray:
        return _lists(values, renumber[parent], mask & keep[parent], int(keep.sum()))

    table = pa.Table.from_arrays(
        [nested[QUERY].combine_chunks().filter(pa.array(keep)), lists(doc, pos), lists(doc, neg),
         lists(values, pos), lists(values, neg), pa.repeat(pa.scalar(prompt, pa.string()), int(keep.sum()))],
        schema=FLAG_SCHEMA)
    return FlagEmbeddingRecords(table, int((~has_pos).sum()), int((has_pos & ~has_neg).sum()))


def write_jsonl(table: pa.Table, fs: fsspec.AbstractFileSystem, path: str) -> int:
    """Write `table` as JSON Lines (UTF-8, non-ASCII text as is) to `path` on `fs`; return the line count."""
    if "/" in path.rstrip("/"):
        fs.makedirs(path.rstrip("/").rsplit("/", 1)[0], exist_ok=True)
    lines = 0
    with fs.open(path, "wb") as f:
        for batch in table.to_batches(max_chunksize=1024):
            rows = batch.to_pylist()
            f.write("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode("utf-8"))
            lines += len(rows)
    return lines


def cross_encoder_table(nested: pa.Table, label: Literal["soft", "hard"] = "hard",
                        combine: Literal["zscore", "probability"] = "zscore") -> pa.Table:
    """Flat (query, doc, label: float32) pairs for sentence-transformers' CrossEncoderTrainer,
    which takes every column but `label` as model inputs, so there are exactly these three.

    - hard: the positives (label 1.0) and hard negatives (0.0) only, query by query in
      teacher-rank order. Loss: `BinaryCrossEntropyLoss` (the MS MARCO cross-encoder recipe).
    - soft: every candidate, labelled with the teachers' combined probability: `combined`
      itself when the labels were made with combine="probability" (the weighted mean of the
      teachers' probabilities), else sigmoid(combined), a per-query relative label in (0, 1)
      (a query's average candidate gets 0.5). Pass the LabelsConfig's `combine`. Loss:
      `BinaryCrossEntropyLoss` too (BCE-with-logits takes targets anywhere in [0, 1]).
    """
    if label not in ("soft", "hard") or combine not in ("zscore", "probability"):
        raise ConfigError(f"label must be 'soft' or 'hard' (got {label!r}); combine 'zscore' or 'probability' "
                          f"(got {combine!r})")
    flat, parent = _flat(nested)
    queries = nested[QUERY].combine_chunks().take(pa.array(parent))
    if label == "hard":
        pos = _flag(flat, POSITIVE)
        mask = pa.array(pos | _flag(flat, HARD_NEGATIVE))
        return pa.table({"query": queries.filter(mask), "doc": flat.field(DOC).filter(mask),
                         "label": pa.array(pos.astype(np.float32)).filter(mask)})
    combined = flat.field(COMBINED).to_numpy(zero_copy_only=False)
    if combine == "probability":
        if len(combined) and not (combined.min() >= -1e-9 and combined.max() <= 1 + 1e-9):
            raise ConfigError("combine='probability', but the combined scores are not in [0, 1]: these labels were "
                              "made with combine: zscore; pass combine='zscore'")
        soft = np.clip(combined, 0.0, 1.0)
    else:
        soft = 0.5 * (1.0 + np.tanh(0.5 * combined))  # sigmoid
    return pa.table({"query": queries, "doc": flat.field(DOC), "label": pa.array(soft.astype(np.float32))})
