"""Canonical column names inside the pipeline and in the ranked output. The ones the
scoring actor reads and writes are the engine's (reranker_actors.columns)."""

from reranker_actors.columns import (
    ATTENTION,
    BATCH_END,
    BATCH_START,
    DOC,
    DOC_ID,
    DTYPE,
    HIT_PREFIX,
    INSTRUCTION,
    KEY_PREFIX,
    QUERY,
    QUERY_ID,
    SCORE,
    SKIP_REASON,
    TEXTS,
    TRUNCATED,
    cache_hit_column,
    cache_key_column,
)

__all__ = ["ATTENTION", "BATCH_END", "BATCH_START", "DOC", "DOC_ID", "DTYPE", "FIRST_STAGE_RANK", "FIRST_STAGE_SCORE",
           "HIT_PREFIX", "INSTRUCTION", "KEY_PREFIX", "LINE", "MODEL", "OUTPUT_COLUMNS", "QUERY", "QUERY_ID", "RANK",
           "ROW", "SCORE", "SHARD", "SKIP_REASON", "TEXTS", "TRUNCATED", "UNITS", "cache_hit_column",
           "cache_key_column", "stage_rank", "stage_score"]

FIRST_STAGE_SCORE = "first_stage_score"
FIRST_STAGE_RANK = "first_stage_rank"
RANK = "rank"
MODEL = "model"

# The ranked output, in this order, followed by the configured extra columns.
OUTPUT_COLUMNS = (QUERY_ID, DOC_ID, SCORE, RANK, FIRST_STAGE_SCORE, FIRST_STAGE_RANK, MODEL)
# Internal columns, never in the output:
SHARD = "_shard"  # index of the read unit (jobs.units) the row came in, among this run's units
UNITS = "_units"  # on an input row's first pair: how many pairs that row yielded; else 0
ROW = "_row"  # the input row the pair came from, within its input file
LINE = "_line"  # a text run converted to Parquet (jobs.run_inputs): the row's line in the text file


def stage_score(stage: int) -> str:
    """A cascade stage's score column in the output (stage 1 = reranker, 2.. = cascade)."""
    return f"stage{stage}_score"


def stage_rank(stage: int) -> str:
    """A cascade stage's rank column: 1 = best among the pairs that stage scored."""
    return f"stage{stage}_rank"
