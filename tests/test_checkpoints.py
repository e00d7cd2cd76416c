"""Shard checkpoints: completeness from `_units`, deterministic files, corrupt files rescored."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from jobs.checkpoints import Checkpoints, ShardAssembler, fingerprint, shard_id
from jobs.inputs import InputFile


def scored(shard: int, qids: list[str], dids: list[str], units: list[int]) -> pa.Table:
    n = len(qids)
    return pa.table({"query_id": qids, "doc_id": dids, "_skip_reason": pa.nulls(n, pa.string()),
                     "_shard": pa.array([shard] * n, pa.int32()), "_units": pa.array(units, pa.int32()),
                     "score": pa.array([float(i) for i in range(n)], pa.float32()),
                     "_dtype": ["float32"] * n, "_truncated": pa.array([0] * n, pa.int32()),
                     "_batch_start": pa.array([1.0] + [None] * (n - 1), pa.float64()),
                     "_batch_end": pa.array([2.0] + [None] * (n - 1), pa.float64())})


def files(*rows: int) -> list[InputFile]:
    return [InputFile(f"/in/{i}.parquet", f"/in/{i}.parquet", 100, n) for i, n in enumerate(rows)]


def test_a_shard_is_complete_only_when_every_input_row_and_all_its_pairs_arrived() -> None:
    # File 0 is nested: 2 input rows (queries) announcing 3 and 1 pairs; its blocks interleave
    # with file 1 (flat, 2 rows). The first pair of query a arrives before the rest.
    asm = ShardAssembler(files(2, 2))
    assert list(asm.add(scored(0, ["a"], ["d1"], [3]))) == []
    assert list(asm.add(scored(1, ["x"], ["d9"], [1]))) == []
    assert list(asm.add(scored(0, ["b"], ["d4"], [1]))) == []  # both rows started, pairs missing
    out = list(asm.add(pa.concat_tables([scored(0, ["a", "a"], ["d2", "d3"], [0, 0]),
                                         scored(1, ["y"], ["d8"], [1])])))
    assert [(i, len(t)) for i, t in out] == [(0, 4), (1, 2)]
    asm.check_complete()


def test_missing_rows_are_reported_not_silently_dropped() -> None:
    asm = ShardAssembler(files(3))
    list(asm.add(scored(0, ["a"], ["d1"], [1])))
    with pytest.raises(RuntimeError, match="before finishing 1 input file"):
        asm.check_complete()


def test_shard_files_are_deterministic_and_a_corrupt_one_is_not_trusted(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    a = Checkpoints(fs, str(tmp_path / "out"), fingerprint({"model": "m"}))
    table = scored(0, ["q2", "q1", "q1"], ["d1", "d2", "d1"], [1, 1, 1])
    entry = a.write("s1", files(3)[0], table)
    again = Checkpoints(fs, str(tmp_path / "out2"), fingerprint({"model": "m"}))
    assert again.write("s1", files(3)[0], table.take([2, 0, 1])).sha256 == entry.sha256  # order-free
    assert (entry.rows, entry.skipped, entry.dtypes) == (3, 0, ["float32"])
    assert a.completed("s1") == entry
    path = Path(a.shard_files(["s1"])[0])
    path.write_bytes(path.read_bytes()[:-10])  # a torn write
    assert a.completed("s1") is None
    assert a.completed("never-written") is None


def test_another_config_or_a_changed_input_file_gets_other_checkpoints(tmp_path: Path) -> None:
    assert fingerprint({"model": "m", "dtype": "float32"}) != fingerprint({"model": "m", "dtype": "bfloat16"})
    fs = fsspec.filesystem("file")
    src = tmp_path / "in.parquet"
    src.write_bytes(b"one")
    f = InputFile(str(src), str(src), 3, 1)
    before = shard_id(fs, f)
    src.write_bytes(b"other content")
    assert shard_id(fs, f) != before


def test_queries_disjoint_tells_whether_any_query_spans_two_shards(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    cp = Checkpoints(fs, str(tmp_path / "out"), "fp")
    shards = {"s0": scored(0, ["a", "a", "b"], ["d1", "d2", "d1"], [1, 1, 1]),
              "s1": scored(0, ["c", "d"], ["d1", "d1"], [1, 1]),
              "s2": scored(0, ["e", "b"], ["d3", "d4"], [1, 1])}
    for (sid, table), file in zip(shards.items(), files(3, 2, 2)):
        cp.write(sid, file, table)
    assert cp.queries_disjoint(["s0", "s1"]) and cp.queries_disjoint(["s1", "s2"])
    assert not cp.queries_disjoint(["s0", "s1", "s2"])  # query b is in s0 and s2
    assert cp.queries_disjoint([])
