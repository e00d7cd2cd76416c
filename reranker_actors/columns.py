"""Column names the scoring actor reads and writes (Arrow batches in, Arrow batches out)."""

from __future__ import annotations

# Read: one row per (query, doc) pair.
QUERY_ID = "query_id"
QUERY = "query"
DOC_ID = "doc_id"
DOC = "doc"
INSTRUCTION = "_instruction"  # the row's task instruction (null: the configured default)
SKIP_REASON = "_skip_reason"  # why a row is not scored (null when it is valid)
TEXTS = (QUERY, DOC, INSTRUCTION)

# Written:
SCORE = "score"  # the default score column; distillation teachers and cascade stages use their own
DTYPE = "_dtype"  # the dtype the actor resolved (auto -> float16, ...); chained scorers join theirs
ATTENTION = "_attention"  # the attention path the actor ran (packed or padded); chained scorers join theirs
TRUNCATED = "_truncated"  # whether any scorer cut the pair's query or doc to fit max_length
BATCH_START = "_batch_start"  # wall-clock time the actor began the batch, on its first row only
BATCH_END = "_batch_end"  # wall-clock time the actor finished the batch, on its first row only
# With passages (the rerank job's scorer): how many were scored, the best one, its characters.
PASSAGES, BEST_PASSAGE, BEST_PASSAGE_CHARS = "passages", "best_passage", "best_passage_chars"
PASSAGE_COLUMNS = (PASSAGES, BEST_PASSAGE, BEST_PASSAGE_CHARS)
CAPPED = "_passages_capped"  # with passages: the document had more than passages.max_per_doc (any scorer)

KEY_PREFIX, HIT_PREFIX = "_key_", "_hit_"


def cache_key_column(score_column: str) -> str:
    """A scorer's score-cache key per pair (reranker_actors.cache_keys)."""
    return f"{KEY_PREFIX}{score_column}"


def cache_hit_column(score_column: str) -> str:
    """Whether the scorer took the pair's score from the cache."""
    return f"{HIT_PREFIX}{score_column}"
