"""The score stage's read units: the row ranges no checkpoint holds, cut into units of about
one batch, read row group by row group (each read once), with pair counts from the footers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import InputConfig
from jobs.inputs import discover
from jobs.units import UnitDatasource, decode_ranges, encode_ranges, merge, missing, plan_units, read_units


def test_missing_is_the_complement_of_what_is_done() -> None:
    assert merge([(5, 9), (0, 2), (2, 4), (8, 12), (3, 3)]).tolist() == [[0, 4], [5, 12]]
    assert merge([(0, 10), (2, 3), (4, 12)]).tolist() == [[0, 12]]  # (one range inside another)
    assert missing([], 10).tolist() == [[0, 10]]
    assert missing([(0, 3), (5, 7), (3, 4)], 10).tolist() == [[4, 5], [7, 10]]
    assert missing([(0, 10)], 10).tolist() == []


def test_ranges_round_trip_through_the_manifest_text_in_a_few_bytes_each() -> None:
    rows = np.random.default_rng(0).permutation(10**6)[:200_000]  # (scattered: a run joined by document)
    ranges = merge(np.stack([rows, rows + 1], axis=1))
    text = encode_ranges(ranges)
    assert np.array_equal(decode_ranges(text), ranges)
    assert len(text) < 4 * len(ranges)  # (as JSON lists: about 20 bytes a range)
    assert decode_ranges(encode_ranges([(2, 5), (0, 2)])).tolist() == [[0, 5]]


def write(path: Path, rows: int, row_group: int) -> None:
    table = pa.table({"query_id": [f"q{i // 4}" for i in range(rows)], "query": ["what"] * rows,
                      "doc_id": [f"d{i}" for i in range(rows)], "doc": [f"text {i}" for i in range(rows)]})
    pq.write_table(table, path, row_group_size=row_group)


def test_units_cover_every_pending_row_once_and_read_back_exactly(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", 50, row_group=16)
    write(tmp_path / "b.parquet", 7, row_group=100)
    inputs = discover(InputConfig(path=str(tmp_path)))
    assert [f.row_groups for f in inputs.files] == [(16, 16, 16, 2), (7,)]
    units = plan_units(inputs.files, {0: [(10, 30), (31, 33)]}, pairs=12)
    # (a unit spans the rows done between those to do: 12 rows to do each, not a unit per gap)
    assert [(u.file, u.start, u.stop, u.done.tolist(), u.num_rows) for u in units] == [
        (0, 0, 34, [[10, 30], [31, 33]], 12), (0, 34, 46, [], 12), (0, 46, 50, [], 4), (1, 0, 7, [], 7)]
    blocks = list(read_units(inputs.fs, inputs.files[0], list(enumerate(units[:3])), inputs.columns))
    whole = pq.read_table(tmp_path / "a.parquet")
    for i, (unit, block) in enumerate(zip(units[:3], blocks, strict=True)):  # (unit 0 spans two row groups)
        todo = [r for r in range(unit.start, unit.stop) if not any(a <= r < b for a, b in unit.done.tolist())]
        assert block.select(whole.column_names).equals(whole.take(todo))
        assert block["_shard"].to_pylist() == [i] * unit.num_rows
        assert block["_row"].to_pylist() == todo
        assert set(block["path"].to_pylist()) == {str(tmp_path / "a.parquet")}


def test_a_read_task_reads_consecutive_units_of_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.parquet", 40, row_group=8)
    write(tmp_path / "b.parquet", 8, row_group=8)
    inputs = discover(InputConfig(path=str(tmp_path)))
    units = plan_units(inputs.files, {}, pairs=4)
    monkeypatch.setattr("jobs.units.READ_TASK_PAIRS", 20)
    tasks = UnitDatasource(inputs.fs, inputs.files, units, inputs.columns).get_read_tasks(1)
    assert [t.metadata.num_rows for t in tasks] == [20, 20, 8]  # never two files in one task
    rows = pa.concat_tables([b for t in tasks for b in t()])
    assert sorted(rows["_shard"].to_pylist()) == [i for i, u in enumerate(units) for _ in range(u.num_rows)]


def test_nested_files_count_their_candidates_as_pairs(tmp_path: Path) -> None:
    candidates = [[{"doc_id": f"d{j}", "doc": "text"} for j in range(n)] for n in (3, 0, 5)]
    pq.write_table(pa.table({"query_id": ["a", "b", "c"], "query": ["x", "y", "z"], "candidates": candidates}),
                   tmp_path / "n.parquet")
    inputs = discover(InputConfig(path=str(tmp_path), layout="nested"))
    assert inputs.files[0].num_rows == 3 and 8 <= inputs.files[0].pairs <= 9  # (an empty list stores one null)
    assert [(u.start, u.stop) for u in plan_units(inputs.files, {}, pairs=6)] == [(0, 2), (2, 3)]



def test_units_read_exactly_the_rows_not_done_however_scattered(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", 300, row_group=32)
    inputs = discover(InputConfig(path=str(tmp_path)))
    rng = np.random.default_rng(7)
    for trial in range(20):
        done_rows = np.flatnonzero(rng.random(300) < rng.choice([0.1, 0.5, 0.9]))
        done = {0: np.stack([done_rows, done_rows + 1], axis=1)}  # (one range a row, unmerged)
        units = plan_units(inputs.files, done, pairs=int(rng.integers(1, 40)))
        assert all(u.num_rows == units[0].num_rows for u in units[:-1])  # (full units but the last)
        blocks = list(read_units(inputs.fs, inputs.files[0], list(enumerate(units)), inputs.columns))
        read = [r for b in blocks for r in b["_row"].to_pylist()]
        assert read == sorted(set(range(300)) - set(done_rows.tolist())), trial
        assert [len(b) for b in blocks] == [u.num_rows for u in units]
