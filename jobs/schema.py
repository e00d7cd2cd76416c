"""Canonical column names inside the pipeline and in the ranked output."""

QUERY_ID = "query_id"
QUERY = "query"
DOC_ID = "doc_id"
DOC = "doc"
FIRST_STAGE_SCORE = "first_stage_score"
FIRST_STAGE_RANK = "first_stage_rank"
SCORE = "score"
RANK = "rank"
MODEL = "model"

# Internal columns, never in the output:
SKIP_REASON = "_skip_reason"  # why a row was skipped (null when it is valid and scored)
INSTRUCTION = "_instruction"  # the row's task instruction (null: the configured default)
DTYPE = "_dtype"  # the dtype the actor that scored the row resolved (auto -> float16, ...)

# The ranked output, in this order, followed by the configured extra columns.
OUTPUT_COLUMNS = (QUERY_ID, DOC_ID, SCORE, RANK, FIRST_STAGE_SCORE, FIRST_STAGE_RANK, MODEL)
SHARD = "_shard"  # index of the row's input file among this run's pending files
UNITS = "_units"  # on an input row's first pair: how many pairs that row yielded; else 0
TRUNCATED = "_truncated"  # pairs the actor truncated in this batch, on the batch's first row
BATCH_START = "_batch_start"  # wall-clock time the actor began this batch, on its first row
BATCH_END = "_batch_end"  # wall-clock time the actor finished this batch, on its first row


KEY_PREFIX, HIT_PREFIX = "_key_", "_hit_"


def cache_key_column(score_column: str) -> str:
    """A scorer's score-cache key per pair (jobs.score_cache), kept in the checkpoints."""
    return f"{KEY_PREFIX}{score_column}"


def cache_hit_column(score_column: str) -> str:
    """Whether the scorer took the pair's score from the cache (counted, then dropped)."""
    return f"{HIT_PREFIX}{score_column}"


def stage_score(stage: int) -> str:
    """A cascade stage's score column in the output (stage 1 = reranker, 2.. = cascade)."""
    return f"stage{stage}_score"


def stage_rank(stage: int) -> str:
    """A cascade stage's rank column: 1 = best among the pairs that stage scored."""
    return f"stage{stage}_rank"
