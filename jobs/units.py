"""The score stage reads its input in units: rows of one input file that no checkpoint
holds yet, about one actor batch of pairs each (checkpoints record input rows, jobs.checkpoints).

    plan_units(files, done, pairs)  -> the rows not done yet, cut into units
    UnitDatasource                  -> a Ray Data datasource: one block per unit, tagged with
                                       `_shard` (the unit's index), `_row` (the row's index in
                                       its file) and `path` (its file's URL)

A read task reads consecutive units of one file (up to READ_TASK_PAIRS pairs), each row
group once, so units smaller than a row group cost no extra reads.
"""

from __future__ import annotations

import base64
import bisect
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from jobs.inputs import PATH_COLUMN, InputFile
from jobs.schema import ROW, SHARD

READ_TASK_PAIRS = 200_000  # pairs one read task reads (a few seconds of normalizing)

# [start, stop) row ranges of one file, as an (n, 2) int64 array: a run whose pairs were
# joined by document completes its rows scattered, about one range per pair, so ranges are
# never Python objects (10^7 of those would be gigabytes in the driver).
Ranges = np.ndarray


def no_ranges() -> Ranges:
    return np.empty((0, 2), np.int64)


def as_ranges(ranges: Ranges | list[tuple[int, int]]) -> Ranges:
    return np.asarray(ranges, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one input file, less `done`: the ranges inside it that a
    checkpoint already holds (a unit spans them rather than splitting at each)."""

    file: int  # index into the run's input files
    start: int  # first input row
    stop: int  # one past the last
    done: Ranges = field(default_factory=no_ranges, compare=False, repr=False)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start - int((self.done[:, 1] - self.done[:, 0]).sum())


def merge(ranges: Ranges | list[tuple[int, int]]) -> Ranges:
    """The same rows as sorted, non-overlapping, non-adjacent ranges."""
    r = as_ranges(ranges)
    r = r[r[:, 0] < r[:, 1]]
    if not len(r):
        return no_ranges()
    r = r[np.argsort(r[:, 0], kind="stable")]
    reach = np.maximum.accumulate(r[:, 1])
    first = np.flatnonzero(np.r_[True, r[1:, 0] > reach[:-1]])
    return np.stack([r[first, 0], np.maximum.reduceat(r[:, 1], first)], axis=1)


def missing(done: Ranges | list[tuple[int, int]], num_rows: int) -> Ranges:
    """The ranges of [0, num_rows) that `done` does not cover."""
    d = np.clip(merge(done), 0, num_rows)
    starts, stops = np.r_[0, d[:, 1]], np.r_[d[:, 0], num_rows]
    keep = starts < stops
    return np.stack([starts[keep], stops[keep]], axis=1)


def runs(rows: np.ndarray) -> Ranges:
    """Distinct row indices as ranges of consecutive rows."""
    rows = np.unique(rows).astype(np.int64)
    if not len(rows):
        return no_ranges()
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.stack([rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1], axis=1)


def encode_ranges(ranges: Ranges | list[tuple[int, int]]) -> str:
    """Ranges as text for a manifest: merged, delta-coded, zlib, base64 (a few bytes a range)."""
    flat = merge(ranges).ravel()
    return base64.b64encode(zlib.compress(np.diff(flat, prepend=0).astype("<i8").tobytes())).decode()


def decode_ranges(text: str) -> Ranges:
    return np.cumsum(np.frombuffer(zlib.decompress(base64.b64decode(text)), "<i8")).reshape(-1, 2)


def pairs_per_row(file: InputFile) -> float:
    """About how many pairs one input row yields (a nested row holds a query's candidates)."""
    return max(1.0, file.pairs / file.num_rows) if file.num_rows else 1.0


def rows_per_unit(file: InputFile, pairs: int) -> int:
    """Input rows holding about `pairs` pairs."""
    return max(1, round(pairs / pairs_per_row(file)))


def plan_units(files: list[InputFile], done: dict[int, Ranges], pairs: int) -> list[Unit]:
    """The rows of `files` not in `done` (by file index), in units of about `pairs` pairs:
    consecutive rows to do, with the done ranges between them (however scattered those are,
    a unit holds `pairs` pairs, never fewer)."""
    units = []
    for index, file in enumerate(files):
        step = rows_per_unit(file, pairs)
        todo = missing(done.get(index, no_ranges()), file.num_rows)
        before = np.r_[0, np.cumsum(todo[:, 1] - todo[:, 0])]  # rows to do before each range
        firsts = np.arange(0, before[-1], step)  # each unit's first and last row to do, counted
        lasts = np.minimum(firsts + step, before[-1]) - 1
        a, b = np.searchsorted(before, firsts, side="right") - 1, np.searchsorted(before, lasts, side="right") - 1
        starts, stops = todo[a, 0] + firsts - before[a], todo[b, 0] + lasts - before[b] + 1
        for i, j, start, stop in zip(a.tolist(), b.tolist(), starts.tolist(), stops.tolist(), strict=True):
            units.append(Unit(index, start, stop, np.stack([todo[i:j, 1], todo[i + 1:j + 1, 0]], axis=1)))
    return units


class UnitDatasource(Datasource):
    """Reads `units` of `files` (columns `columns`), one block per unit."""

    def __init__(self, fs: fsspec.AbstractFileSystem, files: list[InputFile], units: list[Unit],
                 columns: list[str]) -> None:
        super().__init__()
        self.fs, self.files, self.units, self.columns = fs, files, units, columns
        self.groups = self._groups()

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(self._bytes(u) for u in self.units)

    def _bytes(self, unit: Unit) -> int:
        file = self.files[unit.file]
        return int(file.size * unit.num_rows / max(file.num_rows, 1))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object = None) -> list[ReadTask]:
        return [self._task(group) for group in self.groups]

    def num_tasks(self) -> int:
        return len(self.groups)

    def _groups(self) -> list[list[int]]:
        """Unit indices per read task: consecutive units of one file, up to READ_TASK_PAIRS."""
        groups: list[list[int]] = []
        pairs = 0.0
        for index, unit in enumerate(self.units):
            unit_pairs = unit.num_rows * pairs_per_row(self.files[unit.file])
            if not groups or self.units[groups[-1][0]].file != unit.file or pairs + unit_pairs > READ_TASK_PAIRS:
                groups.append([])
                pairs = 0.0
            groups[-1].append(index)
            pairs += unit_pairs
        return groups

    def _task(self, group: list[int]) -> ReadTask:
        file = self.files[self.units[group[0]].file]
        units = [(i, self.units[i]) for i in group]
        meta = BlockMetadata(num_rows=sum(u.num_rows for _, u in units),
                             size_bytes=sum(self._bytes(self.units[i]) for i in group),
                             input_files=[file.url], exec_stats=None)
        fs, columns = self.fs, self.columns
        return ReadTask(lambda: read_units(fs, file, units, columns), meta)


def read_units(fs: fsspec.AbstractFileSystem, file: InputFile, units: list[tuple[int, Unit]],
               columns: list[str]) -> Iterator[pa.Table]:
    """Per (index, unit) of `file`, its rows with `_shard` = index, `_row` = the row's
    index in the file and `path` = the URL.
    Units come in row order; each row group is read once."""
    starts = [0, *accumulate(file.row_groups or (file.num_rows,))]
    loaded: dict[int, pa.Table] = {}
    with fs.open(file.path, "rb") as f:
        parquet = pq.ParquetFile(f)
        for index, unit in units:
            start, stop = unit.start, unit.stop
            first = bisect.bisect_right(starts, start) - 1
            last = bisect.bisect_left(starts, stop) - 1
            for group in [g for g in loaded if g < first]:
                del loaded[group]
            for group in range(first, last + 1):
                if group not in loaded:
                    loaded[group] = parquet.read_row_group(group, columns=columns)
            rows = pa.concat_tables([loaded[g] for g in range(first, last + 1)])
            rows = rows.slice(start - starts[first], stop - start)
            numbers = np.arange(start, stop, dtype=np.int64)
            if len(unit.done):
                keep = pending(unit)
                rows, numbers = rows.filter(pa.array(keep)), numbers[keep]
            yield (rows.append_column(SHARD, pa.array(np.full(len(rows), index, np.int32)))
                   .append_column(ROW, pa.array(numbers))
                   .append_column(PATH_COLUMN, pa.array([file.url] * len(rows), pa.string())))


def pending(unit: Unit) -> np.ndarray:
    """Which rows of [unit.start, unit.stop) are to do (not in `unit.done`), as a mask."""
    edges = np.zeros(unit.stop - unit.start + 1, np.int64)
    np.add.at(edges, unit.done[:, 0] - unit.start, 1)
    np.add.at(edges, unit.done[:, 1] - unit.start, -1)
    return np.cumsum(edges[:-1]) == 0
