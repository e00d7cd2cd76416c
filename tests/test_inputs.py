"""Input discovery and schema checks: every problem named with its file and column."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import InputConfig
from jobs.errors import InputError
from jobs.inputs import discover


def pairs(n: int = 3, **override: pa.Array) -> pa.Table:
    cols = {"query_id": ["q"] * n, "query": ["x"] * n, "doc_id": [f"d{i}" for i in range(n)], "doc": ["t"] * n}
    return pa.table({**cols, **override})


def test_a_directory_is_read_recursively_skipping_hidden_and_underscore_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    pq.write_table(pairs(), tmp_path / "a" / "one.parquet")
    pq.write_table(pairs(), tmp_path / "a" / "b" / "two.parquet")
    pq.write_table(pairs(), tmp_path / "a" / "_tmp.parquet")
    (tmp_path / "a" / "_SUCCESS").write_text("")
    (tmp_path / "a" / "notes.txt").write_text("not data")
    found = discover(InputConfig(path=str(tmp_path / "a")))
    assert [Path(f.path).name for f in found.files] == ["two.parquet", "one.parquet"]
    assert found.num_rows == 6 and found.columns == ["query_id", "query", "doc_id", "doc"]


def test_globs_and_lists(tmp_path: Path) -> None:
    for name in ("x-1.parquet", "x-2.parquet", "y.parquet"):
        pq.write_table(pairs(), tmp_path / name)
    assert len(discover(InputConfig(path=str(tmp_path / "x-*.parquet"))).files) == 2
    both = discover(InputConfig(path=[str(tmp_path / "y.parquet"), str(tmp_path / "x-1.parquet")]))
    assert [Path(f.path).name for f in both.files] == ["y.parquet", "x-1.parquet"]


def test_missing_path_and_no_parquet_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or directory"):
        discover(InputConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"empty.*no files found \(looked for \*\.parquet"):
        discover(InputConfig(path=str(tmp_path / "empty")))


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    pq.write_table(pairs(), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_text("query_id,doc_id\nq,d\n")
    with pytest.raises(InputError, match=r"bad\.parquet: not a readable Parquet file"):
        discover(InputConfig(path=str(tmp_path)))


def test_missing_and_mistyped_columns_are_all_reported_with_their_file(tmp_path: Path) -> None:
    pq.write_table(pairs().drop_columns(["doc"]), tmp_path / "a.parquet")
    pq.write_table(pairs(query_id=pa.array([1.5, 2.5, 3.5])), tmp_path / "b.parquet")
    pq.write_table(pairs(query=pa.array([1, 2, 3])), tmp_path / "c.parquet")
    with pytest.raises(InputError) as e:
        discover(InputConfig(path=str(tmp_path)))
    msg = str(e.value)
    assert "3 input problem(s)" in msg
    assert "a.parquet: missing column 'doc' (doc); present: query_id, query, doc_id" in msg
    assert "b.parquet: column 'query_id' (query_id) has type double; accepted: string, or an integer" in msg
    assert "c.parquet: column 'query' (query) has type int64; accepted: string, large_string, or binary" in msg


def test_mapped_names_are_what_is_checked(tmp_path: Path) -> None:
    pq.write_table(pairs().rename_columns(["qid", "q", "pid", "passage"]), tmp_path / "a.parquet")
    cfg = InputConfig(path=str(tmp_path), columns={"query_id": "qid", "query": "q", "doc_id": "pid",
                                                   "doc": "passage", "score": "bm25"})
    with pytest.raises(InputError, match="missing column 'bm25' \\(score\\)"):
        discover(cfg)


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pairs(0), tmp_path / "a.parquet")
    with pytest.raises(InputError, match="hold 0 rows"):
        discover(InputConfig(path=str(tmp_path)))


def test_nested_layout_schema(tmp_path: Path) -> None:
    good = pa.table({"query_id": ["q"], "query": ["x"],
                     "candidates": [[{"doc_id": "a", "doc": "t", "bm25": 1.0}]]})
    pq.write_table(good, tmp_path / "good.parquet")
    cfg = InputConfig(path=str(tmp_path / "good.parquet"), layout="nested", columns={"score": "bm25"})
    assert discover(cfg).columns == ["query_id", "query", "candidates"]
    bad = pa.table({"query_id": ["q"], "query": ["x"], "candidates": [[{"doc_id": "a"}]]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad\.parquet \(candidates items\): missing column 'doc'"):
        discover(InputConfig(path=str(tmp_path / "bad.parquet"), layout="nested"))
    flat = tmp_path / "flat.parquet"
    pq.write_table(pairs(), flat)
    with pytest.raises(InputError, match="nested layout needs column 'candidates'"):
        discover(InputConfig(path=str(flat), layout="nested"))


def test_globs_skip_markers_and_hidden_files(tmp_path: Path) -> None:
    pq.write_table(pairs(), tmp_path / "part-0.snappy.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-0.snappy.parquet.crc").write_text("x")
    found = discover(InputConfig(path=str(tmp_path / "*")))
    assert [Path(f.path).name for f in found.files] == ["part-0.snappy.parquet"]
    assert found.dirs == [str(tmp_path)]


def test_a_truncated_parquet_file_is_named_and_nothing_is_read(tmp_path: Path) -> None:
    pq.write_table(pairs(), tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "torn.parquet").write_bytes(data[: len(data) // 2])  # an interrupted upload
    with pytest.raises(InputError, match=r"torn\.parquet: not a readable Parquet file"):
        discover(InputConfig(path=str(tmp_path)))


def test_a_schema_that_differs_between_shards_names_the_odd_shard(tmp_path: Path) -> None:
    pq.write_table(pairs(), tmp_path / "part-0.parquet")
    pq.write_table(pairs(doc_id=pa.array([1, 2, 3])), tmp_path / "part-1.parquet")  # int ids: fine
    pq.write_table(pairs(doc=pa.array([b"t"] * 3)), tmp_path / "part-2.parquet")  # binary text: fine
    pq.write_table(pairs().rename_columns(["query_id", "query", "doc_id", "passage"]), tmp_path / "part-3.parquet")
    with pytest.raises(InputError) as e:
        discover(InputConfig(path=str(tmp_path)))
    assert "1 input problem(s)" in str(e.value)
    assert "part-3.parquet: missing column 'doc' (doc); present: query_id, query, doc_id, passage" in str(e.value)


def test_an_input_column_named_path_is_refused(tmp_path: Path) -> None:
    pq.write_table(pairs(path=pa.array(["a", "b", "c"])), tmp_path / "a.parquet")
    with pytest.raises(InputError, match="rename the input column 'path'"):
        discover(InputConfig(path=str(tmp_path), columns={"doc": "path"}))
