"""Per-query distillation labels from one or more teacher rerankers.

`label_queries` takes flat (query, candidate) rows holding *complete* queries (one or many,
rows in any order), so it is correct inside `groupby("query_id").map_groups(...)`, and
returns one row per query: its candidates in teacher-rank order with the combined teacher
score, a soft label, and positive / hard-negative flags. `jobs.label_formats` turns that
into the files training tools read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.errors import ConfigError, InputError
from jobs.schema import DOC, DOC_ID, FIRST_STAGE_RANK, QUERY, QUERY_ID

# The prompt FlagEmbedding's LLM rerankers (bge-reranker-v2-gemma / -minicpm-layerwise) are
# fine-tuned with: the default of `AbsLLMRerankerTrainDataset.__getitem__` when a record has no
# `prompt`, in FlagEmbedding/abc/finetune/reranker/AbsDataset.py (FlagOpen/FlagEmbedding), and the
# `prompt` of every record in examples/finetune/reranker/example_data/prompt_based/examples.jsonl.
DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
CANDIDATES, POSITIVES, HARD_NEGATIVES, NUM_CANDIDATES = "candidates", "positives", "hard_negatives", "num_candidates"
COMBINED, SOFT_LABEL, TEACHER_RANK, POSITIVE, HARD_NEGATIVE = "combined", "soft_label", "teacher_rank", "positive", (
    "hard_negative")
RESERVED = (DOC_ID, DOC, FIRST_STAGE_RANK, COMBINED, SOFT_LABEL, TEACHER_RANK, POSITIVE, HARD_NEGATIVE)
# A teacher's probability from its raw score s, by kind (sigmoid via tanh: no overflow for large |s|).
TO_PROBABILITY = {"logit": lambda s: 0.5 * (1.0 + np.tanh(0.5 * s)), "probability": lambda s: s,
                  "cosine": lambda s: (1.0 + s) / 2.0}


class LabelsConfig(BaseModel):
    """How teacher scores become labels. Ranks are 1-based; rank 1 = best combined score."""

    model_config = ConfigDict(extra="forbid")

    combine: Literal["zscore", "probability"] = Field(
        "zscore", description="Combined teacher score: weighted mean of per-query z-scores of each teacher's raw "
        "score (zscore), or weighted mean of each teacher's probability (probability).")
    temperature: float = Field(1.0, gt=0, description="Soft labels: per-query softmax(combined / temperature).")
    positives_top_k: int = Field(1, ge=1, description="Without qrels: the top-k candidates by combined score.")
    min_relevance: int = Field(
        1, description="With qrels: a judged candidate is positive when its grade >= this; unjudged ones never are.")
    negatives_rank_window: tuple[int, int] = Field(
        (3, 50), description="Hard negatives come from teacher ranks lo..hi (inclusive), 1 <= lo <= hi.")
    negatives_margin: float = Field(
        0.0, ge=0, description="A hard negative's combined score must be <= the weakest positive's minus this.")
    max_negatives: int = Field(15, ge=1, description="At most this many hard negatives: the best-ranked ones.")
    prompt: str = Field(DEFAULT_PROMPT, description="The `prompt` field of FlagEmbedding reranker records.")

    @field_validator("negatives_rank_window")
    @classmethod
    def _window(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"must be [lo, hi] with 1 <= lo <= hi, got {list(value)}")
        return value

    @classmethod
    def load(cls, data: dict[str, Any], where: str = "labels") -> LabelsConfig:
        """Validate a config section, raising ConfigError that names every bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            errors = [f"{where}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors(include_url=False)]
            raise ConfigError(f"{len(errors)} error(s) in {where}:\n  - " + "\n  - ".join(errors)) from None


@dataclass(frozen=True)
class Teacher:
    """A teacher's raw scores in `column`. kind: `logit` (cross-encoder logit, or an LLM's
    logit(yes) - logit(no)) -> probability sigmoid(s); `probability` -> s; `cosine` (bi-encoder)
    -> (1 + s) / 2."""

    name: str
    column: str
    weight: float = 1.0
    kind: Literal["logit", "probability", "cosine"] = "logit"


def check_teachers(teachers: list[Teacher]) -> np.ndarray:
    """The teachers' weights normalised to sum 1; ConfigError for anything a user got wrong."""
    if not teachers:
        raise ConfigError("teachers: give at least one teacher (name, column, weight, kind)")
    names = [t.name for t in teachers]
    for t in teachers:
        if t.kind not in TO_PROBABILITY:
            raise ConfigError(f"teacher {t.name!r}: kind {t.kind!r} is not one of {', '.join(TO_PROBABILITY)}")
        if t.name in RESERVED or names.count(t.name) > 1:
            raise ConfigError(f"teacher name {t.name!r} must be unique and not one of {', '.join(RESERVED)}")
        if not (np.isfinite(t.weight) and t.weight >= 0):
            raise ConfigError(f"teacher {t.name!r}: weight must be a finite number >= 0, got {t.weight}")
    weights = np.array([t.weight for t in teachers], dtype=np.float64)
    if weights.sum() <= 0:
        raise ConfigError(f"teachers: weights {weights.tolist()} sum to 0; give at least one a weight > 0")
    return weights / weights.sum()


def output_schema(teachers: list[Teacher]) -> pa.Schema:
    """The schema `label_queries` returns."""
    candidate = pa.struct(
        [(DOC_ID, pa.string()), (DOC, pa.string()), (FIRST_STAGE_RANK, pa.int32())]
        + [(t.name, pa.float32()) for t in teachers]
        + [(COMBINED, pa.float64()), (SOFT_LABEL, pa.float64()), (TEACHER_RANK, pa.int32()),
           (POSITIVE, pa.bool_()), (HARD_NEGATIVE, pa.bool_())])
    return pa.schema([(QUERY_ID, pa.string()), (QUERY, pa.string()), (CANDIDATES, pa.list_(candidate)),
                      (POSITIVES, pa.list_(pa.string())), (HARD_NEGATIVES, pa.list_(pa.string())),
                      (NUM_CANDIDATES, pa.int32())])


def _column(table: pa.Table, name: str, what: str, type_: pa.DataType) -> pa.Array:
    if name not in table.column_names:
        raise InputError(f"missing column {name!r} ({what}); the table has: {', '.join(table.column_names)}")
    arr = table[name].combine_chunks()
    try:
        arr = pc.cast(arr, type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"column {name!r} ({what}) must be {type_}, got {arr.type}: {e}") from None
    if name != FIRST_STAGE_RANK and arr.null_count:
        raise InputError(f"column {name!r} ({what}) has {arr.null_count} null value(s); every row needs one")
    if pa.types.is_floating(type_) and not np.isfinite(arr.to_numpy(zero_copy_only=False)).all():
        raise InputError(f"column {name!r} ({what}) has NaN or infinite values; every row needs a finite score")
    return arr


def _combined(raws: list[np.ndarray], teachers: list[Teacher], weights: np.ndarray, code: np.ndarray,
              counts: np.ndarray, combine: str) -> np.ndarray:
    """Weighted mean over teachers of per-query z-scores (population std; 0 where a query's
    scores are all equal) or of probabilities."""
    total, n = np.zeros(len(code)), np.maximum(counts, 1)
    for raw, teacher, w in zip(raws, teachers, weights, strict=True):
        if combine == "probability":
            total += w * TO_PROBABILITY[teacher.kind](raw)
            continue
        mean = np.bincount(code, raw, minlength=len(counts)) / n
        dev = raw - mean[code]
        std = np.sqrt(np.bincount(code, dev * dev, minlength=len(counts)) / n)
        flat = std[code] <= 1e-12 * np.maximum(np.abs(mean[code]), 1.0)  # all-equal (up to rounding): z = 0
        total += w * np.where(flat, 0.0, dev / np.where(flat, 1.0, std[code]))
    return total


def _positives(query_ids: pa.Array, doc_ids: pa.Array, rank: np.ndarray, cfg: LabelsConfig,
               qrels: dict[str, dict[str, int]] | None) -> np.ndarray:
    if qrels is None:
        return rank <= cfg.positives_top_k
    present = set(pc.unique(query_ids).to_pylist())
    keys = [f"{q}\x00{d}" for q in present & qrels.keys() for d, g in qrels[q].items() if g >= cfg.min_relevance]
    pair_keys = pc.binary_join_element_wise(query_ids, doc_ids, "\x00")
    return pc.is_in(pair_keys, value_set=pa.array(keys, pa.string())).to_numpy(zero_copy_only=False)


def _check_rows(code: np.ndarray, qid: pa.Array, did: pa.Array, query: pa.Array, firsts: np.ndarray) -> None:
    """InputError for a repeated (query_id, doc_id) or a query_id with several query texts (rows sorted)."""
    dup = np.flatnonzero((code[1:] == code[:-1]) & pc.equal(did[1:], did[:-1]).to_numpy(zero_copy_only=False))
    if len(dup):
        raise InputError(f"{len(dup)} repeated (query_id, doc_id) pair(s), e.g. ({qid[int(dup[0])].as_py()!r}, "
                         f"{did[int(dup[0])].as_py()!r}); each candidate must appear once per query")
    differs = pc.not_equal(query, query.take(pa.array(firsts[code]))).to_numpy(zero_copy_only=False)
    if differs.any():
        raise InputError(f"query_id {qid[int(np.argmax(differs))].as_py()!r} has rows with different query "
                         "texts; each query_id must have exactly one query text")


def _hard_negatives(code: np.ndarray, combined: np.ndarray, rank: np.ndarray, positive: np.ndarray,
                    firsts: np.ndarray, cfg: LabelsConfig) -> np.ndarray:
    """Rows (sorted by query, then rank) that are hard negatives; none in a query without positives."""
    groups = len(firsts)
    weakest = np.full(groups, np.inf)  # the weakest positive's combined score
    np.minimum.at(weakest, code[positive], combined[positive])
    has_positive = np.bincount(code[positive], minlength=groups) > 0
    lo, hi = cfg.negatives_rank_window
    eligible = (has_positive[code] & ~positive & (rank >= lo) & (rank <= hi)
                & (combined <= weakest[code] - cfg.negatives_margin))
    seen = np.cumsum(eligible)
    before = seen[firsts] - eligible[firsts]  # eligible rows in earlier queries
    return eligible & (seen - before[code] <= cfg.max_negatives)


def label_queries(table: pa.Table, teachers: list[Teacher], cfg: LabelsConfig,
                  qrels: dict[str, dict[str, int]] | None = None) -> pa.Table:
    """One row per query (sorted by query_id) with its candidates in teacher-rank order.

    `table` has one row per (query, candidate): query_id, query, doc_id, doc, optionally
    first_stage_rank, and each teacher's raw-score column; every query's rows must all be
    in it (any order, mixed with other queries). Per query:

    - combined: `cfg.combine` of the teachers' scores, weights normalised to sum 1;
    - teacher_rank: 1 = best combined score, ties broken by doc_id ascending;
    - soft_label: softmax(combined / temperature) over the query's candidates (sums to 1);
    - positive: without qrels the top `positives_top_k`; with qrels the candidates judged
      >= `min_relevance` for that query. A query with no positive among its candidates
      (including one that has no qrels entry at all when qrels are given) gets
      `positives = []` and no hard negatives;
    - hard_negative: not positive, teacher_rank within `negatives_rank_window`, combined <=
      (the weakest positive's combined - `negatives_margin`); the best-ranked
      `max_negatives` of those.
    """
    weights = check_teachers(teachers)
    qid, did, query, doc = (_column(table, name, what, pa.string()) for name, what in (
        (QUERY_ID, "query id"), (DOC_ID, "document id"), (QUERY, "query text"), (DOC, "document text")))
    fsr = (_column(table, FIRST_STAGE_RANK, "first-stage rank", pa.int32()) if FIRST_STAGE_RANK in table.column_names
           else pa.nulls(len(table), pa.int32()))
    raws = [_column(table, t.column, f"teacher {t.name!r} score", pa.float64()).to_numpy() for t in teachers]
    # A fixed row order first, so the per-query sums below add up in the same order (and give
    # the same bits) whatever order the rows arrived in.
    fixed = pc.sort_indices(pa.table({"q": qid, "d": did}), [("q", "ascending"), ("d", "ascending")])
    qid, did, query, doc, fsr = (a.take(fixed) for a in (qid, did, query, doc, fsr))
    raws = [raw[fixed.to_numpy()] for raw in raws]
    uniq = pc.unique(qid).sort()  # a query's number: the position of its id in sorted order
    code = pc.index_in(qid, value_set=uniq).to_numpy().astype(np.int64)
    counts = np.bincount(code, minlength=len(uniq))
    combined = _combined(raws, teachers, weights, code, counts, cfg.combine)

    # One sort: (query_id, -combined, doc_id). Everything below is per row in that order.
    order = pc.sort_indices(pa.table({"q": code, "c": combined, "d": did}),
                            [("q", "ascending"), ("c", "descending"), ("d", "ascending")]).to_numpy()
    code, combined, raws = code[order], combined[order], [raw[order] for raw in raws]
    qid, did, query, doc, fsr = (a.take(pa.array(order)) for a in (qid, did, query, doc, fsr))
    firsts = np.cumsum(counts) - counts  # each query's first row
    _check_rows(code, qid, did, query, firsts)
    rank = np.arange(len(code)) - firsts[code] + 1

    e = np.exp((combined - combined[firsts][code]) / cfg.temperature)  # sorted: a query's first row is its max
    soft = e / np.bincount(code, e, minlength=len(counts))[code]
    positive = _positives(qid, did, rank, cfg, qrels)
    hard = _hard_negatives(code, combined, rank, positive, firsts, cfg)
    fields = [did, doc, fsr, *(pa.array(raw, pa.float32()) for raw in raws), pa.array(combined), pa.array(soft),
              pa.array(rank, pa.int32()), pa.array(positive), pa.array(hard)]
    return _nest(output_schema(teachers), fields, code, counts, qid, query, positive, hard)


def _nest(schema: pa.Schema, fields: list[pa.Array], code: np.ndarray, counts: np.ndarray, qid: pa.Array,
          query: pa.Array, positive: np.ndarray, hard: np.ndarray) -> pa.Table:
    """Rows sorted by query then rank -> one row per query, with list columns cut at the query bounds."""
    def bounds(sizes: np.ndarray) -> pa.Array:
        return pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32())

    def ids(mask: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(bounds(np.bincount(code[mask], minlength=len(counts))),
                                        fields[0].filter(pa.array(mask)))

    firsts = pa.array(bounds(counts).to_numpy()[:-1])
    struct = pa.StructArray.from_arrays(fields, fields=list(schema.field(CANDIDATES).type.value_type))
    return pa.Table.from_arrays(
        [qid.take(firsts), query.take(firsts), pa.ListArray.from_arrays(bounds(counts), struct), ids(positive),
         ids(hard), pa.array(counts, pa.int32())], schema=schema)
