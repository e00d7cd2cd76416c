from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.config import InputConfig
from jobs.errors import InputError
from jobs.normalize import Normalizer


def flat(**cols: list) -> pa.Table:
    base = {"query_id": ["q1", "q1"], "query": ["what", "what"], "doc_id": ["d1", "d2"], "doc": ["x", "y"]}
    return pa.table({**base, **cols})


def test_flat_columns_are_mapped_to_canonical_names_and_ids_read_as_strings() -> None:
    cfg = InputConfig(path="x", columns={"query_id": "qid", "doc_id": "pid", "score": "bm25", "rank": "r"},
                      extra_columns=["lang"])
    table = pa.table({"qid": [7, 7], "query": ["a", "a"], "pid": [1, 2], "doc": ["x", "y"],
                      "bm25": [1.5, 0.5], "r": [1, 2], "lang": ["en", "fr"], "ignored": [0, 0]})
    out = Normalizer(cfg)(table)
    assert out.column_names == ["query_id", "query", "doc_id", "doc", "first_stage_score",
                                "first_stage_rank", "lang", "_skip_reason", "_shard", "_row", "_units"]
    assert out["query_id"].to_pylist() == ["7", "7"] and out["doc_id"].to_pylist() == ["1", "2"]
    assert out["first_stage_rank"].type == pa.int32()
    assert out["_skip_reason"].null_count == 2


def test_nested_rows_are_exploded_to_pairs_and_a_query_without_candidates_is_kept_as_skipped() -> None:
    cfg = InputConfig(path="x", layout="nested", columns={"score": "s"}, extra_columns=["lang", "src"])
    cands = pa.array([
        [{"doc_id": "a", "doc": "A", "s": 1.0, "src": "bm25"}, {"doc_id": "b", "doc": "B", "s": 0.5, "src": "dense"}],
        [],
        [{"doc_id": "c", "doc": "C", "s": 2.0, "src": "bm25"}],
    ])
    table = pa.table({"query_id": ["q1", "q2", "q3"], "query": ["one", "two", "three"],
                      "lang": ["en", "de", "zh"], "candidates": cands, "_row": pa.array([40, 41, 42])})
    out = Normalizer(cfg)(table)
    assert out.select(["query_id", "doc_id", "doc", "first_stage_score", "lang", "src"]).to_pylist() == [
        {"query_id": "q1", "doc_id": "a", "doc": "A", "first_stage_score": 1.0, "lang": "en", "src": "bm25"},
        {"query_id": "q1", "doc_id": "b", "doc": "B", "first_stage_score": 0.5, "lang": "en", "src": "dense"},
        {"query_id": "q3", "doc_id": "c", "doc": "C", "first_stage_score": 2.0, "lang": "zh", "src": "bm25"},
        {"query_id": "q2", "doc_id": None, "doc": None, "first_stage_score": None, "lang": "de", "src": None},
    ]
    assert out["_skip_reason"].to_pylist() == [None, None, None, "query has no candidates"]
    # Each input row announces its pair count on its first pair (for the shard checkpoints).
    assert out["_units"].to_pylist() == [2, 0, 1, 1] and sum(out["_units"].to_pylist()) == len(out)
    assert out["_row"].to_pylist() == [40, 40, 42, 41]  # (every pair names its input row)


def test_null_or_empty_text_is_an_error_naming_file_and_pairs() -> None:
    table = flat(doc=["ok", "  "], path=["/data/a.parquet", "/data/a.parquet"])
    with pytest.raises(InputError) as e:
        Normalizer(InputConfig(path="x"))(table)
    msg = str(e.value)
    assert "1 invalid pair" in msg and "/data/a.parquet: (query_id='q1', doc_id='d2'): doc is null or empty" in msg
    assert "on_invalid: skip" in msg


def test_at_most_ten_offending_pairs_are_listed() -> None:
    n = 25
    table = pa.table({"query_id": ["q"] * n, "query": ["x"] * n, "doc_id": [f"d{i}" for i in range(n)],
                      "doc": [None] * n})
    with pytest.raises(InputError) as e:
        Normalizer(InputConfig(path="x"))(table)
    assert "25 invalid pair(s)" in str(e.value) and str(e.value).count("doc is null or empty") == 10


def test_skip_marks_each_row_with_its_first_reason() -> None:
    table = pa.table({"query_id": ["q", None, "q", "q"], "query": ["x", "x", "", "x"],
                      "doc_id": ["a", "b", "c", "d"], "doc": ["t", "t", None, "t"]})
    out = Normalizer(InputConfig(path="x", on_invalid="skip"))(table)
    assert out["_skip_reason"].to_pylist() == [
        None, "query_id is null or empty", "query is null or empty", None
    ]


def test_ids_are_always_plain_strings() -> None:
    table = pa.table({"query_id": pa.array(["q", "q"], pa.large_string()), "query": ["a", "a"],
                      "doc_id": pa.array(["x", "y"]).dictionary_encode(),
                      "doc": pa.array(["t", "u"], pa.large_string())})
    out = Normalizer(InputConfig(path="x"))(table)
    assert out.schema.field("query_id").type == pa.string() and out.schema.field("doc_id").type == pa.string()
    assert out["doc_id"].to_pylist() == ["x", "y"]


def test_nested_invalid_rows_name_their_file() -> None:
    cands = pa.array([[{"doc_id": "a", "doc": "A"}, {"doc_id": "b", "doc": ""}]])
    table = pa.table({"query_id": ["q1"], "query": ["one"], "candidates": cands, "path": ["/data/n.parquet"]})
    with pytest.raises(InputError, match=r"/data/n.parquet: \(query_id='q1', doc_id='b'\): doc is null or empty"):
        Normalizer(InputConfig(path="x", layout="nested"))(table)


def test_a_query_without_candidates_is_quarantined_never_an_error() -> None:
    cands = pa.array([None, [{"doc_id": "a", "doc": "A"}]], pa.list_(pa.struct({"doc_id": pa.string(),
                                                                                 "doc": pa.string()})))
    table = pa.table({"query_id": ["q1", "q2"], "query": ["one", "two"], "candidates": cands})
    out = Normalizer(InputConfig(path="x", layout="nested"))(table)
    assert out.select(["query_id", "_skip_reason", "_units"]).to_pylist() == [
        {"query_id": "q2", "_skip_reason": None, "_units": 1},
        {"query_id": "q1", "_skip_reason": "query has no candidates", "_units": 1},
    ]


def test_a_nan_first_stage_score_is_invalid_but_null_is_allowed() -> None:
    table = flat(bm25=[float("nan"), None])
    cfg = dict(path="x", columns={"score": "bm25"})
    with pytest.raises(InputError, match=r"doc_id='d1'\): first-stage score is NaN"):
        Normalizer(InputConfig(**cfg))(table)
    out = Normalizer(InputConfig(**cfg, on_invalid="skip"))(table)
    assert out["_skip_reason"].to_pylist() == ["first-stage score is NaN", None]


def test_binary_text_is_decoded_and_invalid_utf8_is_named() -> None:
    docs = pa.array(["héllo".encode(), b"\xff\xfe bad", "文档".encode()], pa.binary())
    table = pa.table({"query_id": ["q"] * 3, "query": ["x"] * 3, "doc_id": ["a", "b", "c"], "doc": docs})
    with pytest.raises(InputError, match=r"doc_id='b'\): doc is not valid UTF-8"):
        Normalizer(InputConfig(path="x"))(table)
    out = Normalizer(InputConfig(path="x", on_invalid="skip"))(table)
    assert out["doc"].to_pylist() == ["héllo", None, "文档"]
    assert out["_skip_reason"].to_pylist() == [None, "doc is not valid UTF-8", None]


def test_pairs_keep_the_unit_and_the_input_row_they_were_read_in() -> None:
    table = flat().append_column("_shard", pa.array([1, 0], pa.int32())).append_column("_row", pa.array([8, 3]))
    out = Normalizer(InputConfig(path="x"))(table)
    assert out["_shard"].to_pylist() == [1, 0] and out["_row"].to_pylist() == [8, 3]
