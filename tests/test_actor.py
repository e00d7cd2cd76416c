"""ScoreActor without Ray: row isolation by bisection, the broken-model guard, counters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from jobs.errors import InputError, ModelError
from reranker_actors.actor import ScoreActor


def batch(n: int) -> pa.Table:
    return pa.table({"query_id": ["q"] * n, "query": ["what is lift"] * n,
                     "doc_id": [f"d{i}" for i in range(n)], "doc": [f"wing text {i}" for i in range(n)],
                     "_skip_reason": pa.nulls(n, pa.string())})


def actor(model: str, on_invalid: str, bad: set[str]) -> ScoreActor:
    a = ScoreActor({"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 64},
                   expect_gpu=False, threads=1, on_invalid=on_invalid)
    score = a.reranker.score

    def failing(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> np.ndarray:
        if any(d in bad for d in docs):
            raise ValueError("tokenizer exploded")
        return score(queries, docs)

    a.reranker.score = failing  # type: ignore[method-assign]
    return a


def test_rows_that_fail_alone_are_found_and_the_others_scored_exactly(tiny_bert_dir: str) -> None:
    rows = batch(37)
    clean = actor(tiny_bert_dir, "skip", set())(rows)
    out = actor(tiny_bert_dir, "skip", {"wing text 5", "wing text 30"})(rows)
    reasons = out["_skip_reason"].to_pylist()
    assert [i for i, r in enumerate(reasons) if r] == [5, 30]
    assert reasons[5] == "scoring failed: ValueError: tokenizer exploded"
    assert out["score"].null_count == 2
    ok = [i for i in range(37) if i not in (5, 30)]
    # (other batch shapes: equal up to float32 summation order)
    np.testing.assert_allclose(out["score"].to_numpy()[ok], clean["score"].to_numpy()[ok], atol=1e-5)


def test_under_on_invalid_error_a_failing_row_stops_the_job_naming_it(tiny_bert_dir: str) -> None:
    with pytest.raises(InputError, match=r"doc_id='d3'\): scoring failed: ValueError"):
        actor(tiny_bert_dir, "error", {"wing text 3"})(batch(8))


def test_a_model_failing_on_most_rows_is_an_error_not_a_quarantine(tiny_bert_dir: str) -> None:
    every = {f"wing text {i}" for i in range(8)}
    with pytest.raises(ModelError, match="failed on 8 of 8 pairs"):
        actor(tiny_bert_dir, "skip", every)(batch(8))


def test_truncated_pairs_are_counted_once_per_batch(tiny_bert_dir: str) -> None:
    rows = batch(4).set_column(3, "doc", pa.array(["short", "long " * 200, "short", "long " * 300]))
    out = actor(tiny_bert_dir, "skip", set())(rows)
    assert out["_truncated"].to_pylist() == [2, 0, 0, 0] and out["_dtype"].to_pylist() == ["float32"] * 4


def test_a_failure_reason_never_carries_the_row_texts(tiny_bert_dir: str) -> None:
    a = actor(tiny_bert_dir, "skip", set())

    def quoting(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> np.ndarray:
        raise ValueError(f"cannot handle {docs[0]!r} for {queries[0]!r}")

    a.reranker.score = quoting  # type: ignore[method-assign]
    out = a(batch(1))
    assert out["_skip_reason"].to_pylist() == ["scoring failed: ValueError: cannot handle '<doc>' for '<query>'"]
