"""ScoreActor without Ray: row isolation by bisection, the broken-model guard, counters,
and failure reasons that never carry a row's texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from reranker_actors.actor import ScoreActor
from reranker_actors.base import Scores
from reranker_actors.errors import InputError, ModelError


def batch(n: int) -> pa.Table:
    return pa.table({"query_id": ["q"] * n, "query": ["what is lift"] * n,
                     "doc_id": [f"d{i}" for i in range(n)], "doc": [f"wing text {i}" for i in range(n)],
                     "_skip_reason": pa.nulls(n, pa.string())})


def actor(model: str, on_invalid: str, bad: set[str]) -> ScoreActor:
    a = ScoreActor({"backend": "cross_encoder", "model": model, "dtype": "float32", "max_length": 64},
                   expect_gpu=False, threads=1, on_invalid=on_invalid)
    score = a.reranker.score

    def failing(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> Scores:
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


def test_truncated_pairs_are_marked_per_row_once_even_when_isolating_failures(tiny_bert_dir: str) -> None:
    rows = batch(4).set_column(3, "doc", pa.array(["short", "long " * 200, "short", "long " * 300]))
    out = actor(tiny_bert_dir, "skip", set())(rows)
    assert out["_truncated"].to_pylist() == [False, True, False, True]
    assert out["_dtype"].to_pylist() == ["float32"] * 4
    # Bisection scores rows again; a row that failed is not counted, the others once.
    rows = batch(8).set_column(3, "doc", pa.array(["long " * 200] * 7 + ["wing text 7"]))
    out = actor(tiny_bert_dir, "skip", {"wing text 7"})(rows)
    assert out["_truncated"].to_pylist() == [True] * 7 + [False] and pa.compute.sum(out["_truncated"]).as_py() == 7


TEXTS = {
    "quotes": ('what\'s "lift"?', 'He said "it\'s lift" —\nthen "drag"\tand \\back'),
    "non-ascii": ("翼型的升力是什么", "Flügel über Überschall: 翼型 der Tragfläche, große Auftriebsbeiwerte"),
    "long": ("what is lift", "boundary layer " * 400),
}


@pytest.mark.parametrize("spelling", ["raw", "repr", "ascii", "json", "cut", "escaped"])
@pytest.mark.parametrize("case", sorted(TEXTS))
def test_a_failure_reason_never_carries_the_row_texts(tiny_bert_dir: str, case: str, spelling: str) -> None:
    import json

    query, doc = TEXTS[case]
    spell = {"raw": str, "repr": repr, "ascii": ascii, "json": json.dumps, "cut": lambda t: repr(t[:25]) + "...",
             "escaped": lambda t: t.encode("unicode_escape").decode()}[spelling]
    a = actor(tiny_bert_dir, "skip", set())

    def quoting(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> Scores:
        raise ValueError(f"cannot handle {spell(docs[0])} for {spell(queries[0])} at 3")

    a.reranker.score = quoting  # type: ignore[method-assign]
    rows = batch(1).set_column(1, "query", pa.array([query])).set_column(3, "doc", pa.array([doc]))
    reason = a(rows)["_skip_reason"].to_pylist()[0]
    assert reason.startswith("scoring failed: ValueError: cannot handle") and "<doc>" in reason
    if case != "long":  # (a long message is cut, at 300 characters)
        assert reason.endswith(" at 3")
    for text in (query, doc):
        for form in {text, repr(text)[1:-1], ascii(text)[1:-1], json.dumps(text)[1:-1]}:
            assert all(form[i:i + 6] not in reason for i in range(len(form) - 5)), (form, reason)
    assert len(reason) <= 300


def test_a_reason_keeps_the_words_of_the_error(tiny_bert_dir: str) -> None:
    a = actor(tiny_bert_dir, "skip", set())

    def quoting(queries: Sequence[str], docs: Sequence[str], instructions: object = None) -> Scores:
        raise ValueError(f"cannot handle {docs[0]!r} for {queries[0]!r}")

    a.reranker.score = quoting  # type: ignore[method-assign]
    out = a(batch(1))
    assert out["_skip_reason"].to_pylist() == ["scoring failed: ValueError: cannot handle '<doc>' for '<query>'"]
