"""Staging, commit and cleanup of the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs.output import OutputDir, OutputError


def stage(out: OutputDir, tables: list[pa.Table]) -> str:
    staged = Path(out.staging("ranked"))
    staged.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tables):
        pq.write_table(t, staged / f"{i}_x.parquet")
    return str(staged)


def test_commit_publishes_part_files_and_success_marker(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    out.prepare([])
    files = out.commit(stage(out, [pa.table({"a": [1, 2]}), pa.table({"a": [3]})]), {"rows": 3})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS", "part-00000.parquet",
                                                                   "part-00001.parquet"]
    assert [Path(f).name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    marker = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert marker["rows"] == 3 and marker["files"] == ["part-00000.parquet", "part-00001.parquet"]
    assert pads.dataset(str(tmp_path / "out")).to_table()["a"].to_pylist() == [1, 2, 3]


def test_a_rerun_replaces_the_previous_output_never_appends(tmp_path: Path) -> None:
    first = OutputDir(str(tmp_path / "out"))
    first.prepare([])
    first.commit(stage(first, [pa.table({"a": [1]}), pa.table({"a": [2]}), pa.table({"a": [3]})]), {})
    second = OutputDir(str(tmp_path / "out"))
    second.prepare([])
    second.commit(stage(second, [pa.table({"a": [9]})]), {})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS", "part-00000.parquet"]
    assert pads.dataset(str(tmp_path / "out")).to_table()["a"].to_pylist() == [9]


def test_abort_removes_staging_and_a_directory_this_run_created(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path / "new"))
    out.prepare([])
    stage(out, [pa.table({"a": [1]})])
    out.abort()
    assert not (tmp_path / "new").exists()


def test_abort_leaves_the_last_good_output_untouched(tmp_path: Path) -> None:
    good = OutputDir(str(tmp_path / "out"))
    good.prepare([])
    good.commit(stage(good, [pa.table({"a": [1]})]), {"run": "good"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    failed = OutputDir(str(tmp_path / "out"))
    failed.prepare([])
    stage(failed, [pa.table({"a": [666]})])
    failed.abort()
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_output_inside_or_equal_to_the_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputError, match="contains input file"):
        OutputDir(str(data)).prepare([str(data / "x.parquet")])


def test_foreign_files_in_the_output_are_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.csv").write_text("keep me")
    with pytest.raises(OutputError, match=r"holds files this job did not write.*precious.csv"):
        OutputDir(str(tmp_path / "out")).prepare([])
    assert (tmp_path / "out" / "precious.csv").read_text() == "keep me"


def test_an_unwritable_output_is_reported_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not writable"):
        OutputDir(str(tmp_path / "file" / "out")).prepare([])


def test_a_failed_commit_restores_the_last_good_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = OutputDir(str(tmp_path / "out"))
    good.prepare([])
    good.commit(stage(good, [pa.table({"a": [1]}), pa.table({"a": [2]})]), {"run": "good"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    failing = OutputDir(str(tmp_path / "out"))
    failing.prepare([])
    staged = stage(failing, [pa.table({"a": [8]}), pa.table({"a": [9]})])
    real_mv, calls = failing.fs.mv, []

    def mv(src: str, dst: str, **kw: object) -> None:
        calls.append(src)
        if src.startswith(staged) and len([c for c in calls if c.startswith(staged)]) == 2:
            raise OSError("disk full")
        real_mv(src, dst, **kw)

    monkeypatch.setattr(failing.fs, "mv", mv)
    with pytest.raises(OSError, match="disk full"):
        failing.commit(staged, {"run": "bad"})
    monkeypatch.undo()
    failing.abort()
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_output_inside_an_input_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is inside input directory"):
        OutputDir(str(tmp_path / "data" / "ranked")).prepare([str(tmp_path / "data" / "x.parquet")],
                                                             [str(tmp_path / "data")])
