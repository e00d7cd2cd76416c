"""Checkpoints: input rows complete from `_units` as soon as their pairs arrive, parts written
per file within FLUSH_S without waiting for more rows, deterministic files, corrupt ones
rescored, entries in input order."""

from __future__ import annotations

import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from jobs.checkpoints import Checkpoints, PartWriter, RowAssembler, fingerprint, shard_id
from jobs.inputs import InputFile
from jobs.units import Unit, runs


def scored(shard: int, qids: list[str], dids: list[str], units: list[int], rows: list[int] | None = None) -> pa.Table:
    """Pairs as the actor pool returns them: of unit `shard`, from input rows `rows`."""
    n = len(qids)
    return pa.table({"query_id": qids, "doc_id": dids, "_skip_reason": pa.nulls(n, pa.string()),
                     "_shard": pa.array([shard] * n, pa.int32()), "_units": pa.array(units, pa.int32()),
                     "_row": pa.array(rows if rows is not None else range(n), pa.int64()),
                     "score": pa.array([float(i) for i in range(n)], pa.float32()),
                     "_dtype": ["float32"] * n, "_truncated": pa.array([0] * n, pa.int32()),
                     "_batch_start": pa.array([1.0] + [None] * (n - 1), pa.float64()),
                     "_batch_end": pa.array([2.0] + [None] * (n - 1), pa.float64())})


def files(*rows: int) -> list[InputFile]:
    return [InputFile(f"/in/{i}.parquet", f"/in/{i}.parquet", 100, n) for i, n in enumerate(rows)]


def whole(*rows: int) -> list[Unit]:
    """One unit per file, holding all its rows."""
    return [Unit(i, 0, n) for i, n in enumerate(rows)]


def handed_out(out: list[tuple[int, list[tuple[int, int]], pa.Table]]) -> list[tuple[int, list, list[str]]]:
    return [(file, [tuple(r) for r in ranges.tolist()], table["doc_id"].to_pylist()) for file, ranges, table in out]


def test_a_row_is_handed_out_in_the_block_that_completes_it() -> None:
    # File 0 is nested: rows 0 and 1 (queries a, b) announce 3 and 1 pairs; the pairs of
    # query a come in two blocks. File 1 is flat: a row is complete in the block it is in.
    asm = RowAssembler(whole(2, 2), files(2, 2))
    assert asm.add(scored(0, ["a"], ["d1"], [3], rows=[0])) == []
    assert handed_out(asm.add(scored(1, ["x"], ["d9"], [1], rows=[0]))) == [(1, [(0, 1)], ["d9"])]
    assert handed_out(asm.add(scored(0, ["b"], ["d4"], [1], rows=[1]))) == [(0, [(1, 2)], ["d4"])]
    out = asm.add(pa.concat_tables([scored(0, ["a", "a"], ["d2", "d3"], [0, 0], rows=[0, 0]),
                                    scored(1, ["y"], ["d8"], [1], rows=[1])]))
    assert handed_out(out) == [(0, [(0, 1)], ["d1", "d2", "d3"]), (1, [(1, 2)], ["d8"])]
    asm.check_complete()


def test_rows_of_several_units_and_files_in_one_block_come_out_as_ranges_per_file() -> None:
    units = [Unit(0, 0, 4), Unit(0, 4, 8), Unit(1, 0, 3)]
    asm = RowAssembler(units, files(8, 3))
    block = pa.concat_tables([scored(0, ["q"] * 3, ["a", "b", "c"], [1] * 3, rows=[0, 1, 3]),
                              scored(1, ["q"] * 2, ["d", "e"], [1] * 2, rows=[4, 5]),
                              scored(2, ["r"], ["f"], [1], rows=[2])])
    assert [(f, r.tolist()) for f, r, _ in asm.add(block)] == [(0, [[0, 2], [3, 6]]), (1, [[2, 3]])]
    assert runs(pa.array([9, 3, 4, 4, 7]).to_numpy()).tolist() == [[3, 5], [7, 8], [9, 10]]


def test_a_row_that_arrives_twice_is_an_error() -> None:
    asm = RowAssembler([Unit(0, 0, 2)], files(2))
    asm.add(scored(0, ["a"], ["d1"], [1], rows=[0]))
    with pytest.raises(RuntimeError, match=r"rows 0-1 of /in/0.parquet: a row arrived twice"):
        asm.add(scored(0, ["a", "b"], ["d1", "d2"], [1, 1], rows=[0, 1]))


def test_missing_rows_are_reported_naming_the_rows_and_the_file() -> None:
    asm = RowAssembler([Unit(0, 10, 13)], files(20))
    asm.add(scored(0, ["a"], ["d1"], [1], rows=[10]))
    with pytest.raises(RuntimeError, match=r"before finishing 1 unit.*rows 10-12 of /in/0.parquet"):
        asm.check_complete()


def test_parts_are_deterministic_and_a_corrupt_one_is_not_trusted(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    a = Checkpoints(fs, str(tmp_path / "out"), fingerprint({"model": "m"}))
    table = scored(0, ["q2", "q1", "q1"], ["d1", "d2", "d1"], [1, 1, 1])
    entry = a.write("s1", files(3)[0], [(0, 3)], table)
    again = Checkpoints(fs, str(tmp_path / "out2"), fingerprint({"model": "m"}))
    assert again.write("s1", files(3)[0], [(0, 3)], table.take([2, 0, 1])).sha256 == entry.sha256  # order-free
    assert (entry.rows, entry.skipped, entry.dtypes, entry.row_ranges().tolist()) == (3, 0, ["float32"], [[0, 3]])
    assert a.load(["s1"]) == [entry]
    assert a.load(["another file"]) == []  # (a changed input file has another shard id)
    path = Path(a.part_file(entry))
    path.write_bytes(path.read_bytes()[:-10])  # a torn write
    assert a.load(["s1"]) == []


def test_parts_whose_ranges_interleave_load_and_overlapping_ones_are_refused(tmp_path: Path) -> None:
    """Units complete out of order (several actors), so one write may hold rows 0-24 and
    50-74 and the next rows 25-49: that is no overlap. Two parts holding one row is."""
    cp = Checkpoints(fsspec.filesystem("file"), str(tmp_path / "out"), "fp")
    first = cp.write("s0", files(100)[0], [(0, 25), (50, 75)], scored(0, ["a"], ["d1"], [1]))
    second = cp.write("s0", files(100)[0], [(25, 50)], scored(0, ["b"], ["d1"], [1]))
    assert cp.load(["s0"]) == [first, second]
    cp.write("s0", files(100)[0], [(70, 80)], scored(0, ["c"], ["d1"], [1]))
    with pytest.raises(RuntimeError, match=r"both hold rows of /in/0\.parquet"):
        cp.load(["s0"])


def test_entries_load_in_input_and_row_order(tmp_path: Path) -> None:
    cp = Checkpoints(fsspec.filesystem("file"), str(tmp_path / "out"), "fp")
    late = cp.write("s0", files(9)[0], [(5, 9)], scored(0, ["b"], ["d1"], [1]))
    other = cp.write("s1", files(9)[0], [(0, 9)], scored(0, ["c"], ["d1"], [1]))
    early = cp.write("s0", files(9)[0], [(0, 2), (3, 5)], scored(0, ["a"], ["d1"], [1]))
    assert cp.load(["s0", "s1"]) == [early, late, other]
    assert [(g.files, g.pairs) for g in cp.by_input(cp.load(["s1", "s0"]))] == [
        ([cp.part_file(other)], 1), ([cp.part_file(early), cp.part_file(late)], 2)]


def test_the_writer_writes_waiting_rows_within_flush_s_without_waiting_for_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = Checkpoints(fsspec.filesystem("file"), str(tmp_path / "out"), "fp")
    monkeypatch.setattr("jobs.checkpoints.FLUSH_S", 0.2)

    def written(n: int) -> None:
        deadline = time.monotonic() + 5
        while len(cp.load(["s0", "s1"])) < n:  # nothing else arrives: written all the same
            assert time.monotonic() < deadline, "rows waiting in the writer were not written"
            time.sleep(0.01)

    with PartWriter(cp, files(30, 30), ["s0", "s1"]) as writer:
        writer.add(0, [(0, 10)], scored(0, ["a"], ["d1"], [1]))  # (the first write is due at once)
        written(1)
        writer.add(1, [(20, 30)], scored(1, ["b"], ["d1"], [1]))  # due 0.2 s after the first: one write
        writer.add(0, [(10, 15), (15, 20)], scored(2, ["c", "e"], ["d1", "d1"], [1, 1]))
        written(3)
        assert [(e.sid, e.row_ranges().tolist(), e.rows) for e in cp.load(["s0", "s1"])] == [
            ("s0", [[0, 10]], 1), ("s0", [[10, 20]], 2), ("s1", [[20, 30]], 1)]
        monkeypatch.setattr("jobs.checkpoints.FLUSH_S", 3600.0)
        writer.add(0, [(20, 30)], scored(0, ["d"], ["d1"], [1]))  # not due for an hour: written on leaving
    assert [e.row_ranges().tolist() for e in cp.load(["s0"])] == [[[0, 10]], [[10, 20]], [[20, 30]]]
    assert len(writer.written) == 4


def test_a_failed_write_fails_the_next_add(tmp_path: Path) -> None:
    cp = Checkpoints(fsspec.filesystem("file"), str(tmp_path / "out"), "fp")
    (tmp_path / "out").write_text("a file where the checkpoints' directory should be")
    writer = PartWriter(cp, files(30), ["s0"])
    writer.add(0, [(0, 10)], scored(0, ["a"], ["d1"], [1]))
    with pytest.raises(OSError):
        for _ in range(100):
            time.sleep(0.05)
            writer.add(0, [(10, 11)], scored(0, ["a"], ["d2"], [1]))
    writer.close(raise_error=False)


def test_another_config_or_a_changed_input_file_gets_other_checkpoints(tmp_path: Path) -> None:
    assert fingerprint({"model": "m", "dtype": "float32"}) != fingerprint({"model": "m", "dtype": "bfloat16"})
    fs = fsspec.filesystem("file")
    src = tmp_path / "in.parquet"
    src.write_bytes(b"one")
    f = InputFile(str(src), str(src), 3, 1)
    before = shard_id(fs, f)
    src.write_bytes(b"other content")
    assert shard_id(fs, f) != before


def test_queries_disjoint_tells_whether_any_query_spans_two_input_files(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    cp = Checkpoints(fs, str(tmp_path / "out"), "fp")
    parts = [("s0", (0, 2), scored(0, ["a", "a"], ["d1", "d2"], [1, 1])),
             ("s0", (2, 3), scored(0, ["a", "b"], ["d3", "d1"], [1, 1])),  # a spans two parts of one file
             ("s1", (0, 2), scored(0, ["c", "d"], ["d1", "d1"], [1, 1])),
             ("s2", (0, 2), scored(0, ["e", "b"], ["d3", "d4"], [1, 1]))]
    for sid, rows, table in parts:
        cp.write(sid, files(3)[0], [rows], table)
    entries = cp.load(["s0", "s1", "s2"])
    of = lambda *sids: [e for e in entries if e.sid in sids]  # noqa: E731
    assert cp.queries_disjoint(of("s0", "s1")) and cp.queries_disjoint(of("s1", "s2"))
    assert not cp.queries_disjoint(entries)  # query b is in s0 and s2
    assert cp.queries_disjoint([])
