"""The score stage reads its input in units: row ranges of one input file, about one actor
batch of pairs each. A unit is what a checkpoint records as done (jobs.checkpoints), so a
crash loses the units in flight, not a whole file or a group of small files read together.

    plan_units(files, done, pairs)  -> the row ranges not done yet, cut into units
    UnitDatasource                  -> a Ray Data datasource: one block per unit, tagged with
                                       `_shard` (the unit's index), `_row` (the row's index in
                                       its file) and `path` (its file's URL)

A read task reads consecutive units of one file (up to READ_TASK_PAIRS pairs), each row
group once, so units smaller than a row group cost no extra reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
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

Ranges = list[tuple[int, int]]  # [start, stop) row ranges of one file


@dataclass(frozen=True)
class Unit:
    file: int  # index into the run's input files
    start: int  # first input row
    stop: int  # one past the last

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def merge(ranges: Ranges) -> Ranges:
    """The same rows as sorted, non-overlapping, non-adjacent ranges."""
    out: Ranges = []
    for start, stop in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def missing(done: Ranges, num_rows: int) -> Ranges:
    """The ranges of [0, num_rows) that `done` does not cover."""
    out, at = [], 0
    for start, stop in merge(done):
        if start > at:
            out.append((at, min(start, num_rows)))
        at = max(at, stop)
    return [*out, (at, num_rows)] if at < num_rows else out


def pairs_per_row(file: InputFile) -> float:
    """About how many pairs one input row yields (a nested row holds a query's candidates)."""
    return max(1.0, file.pairs / file.num_rows) if file.num_rows else 1.0


def rows_per_unit(file: InputFile, pairs: int) -> int:
    """Input rows holding about `pairs` pairs."""
    return max(1, round(pairs / pairs_per_row(file)))


def plan_units(files: list[InputFile], done: dict[int, Ranges], pairs: int) -> list[Unit]:
    """The rows of `files` not in `done` (by file index), in units of about `pairs` pairs."""
    units = []
    for index, file in enumerate(files):
        step = rows_per_unit(file, pairs)
        for start, stop in missing(done.get(index, []), file.num_rows):
            units += [Unit(index, at, min(at + step, stop)) for at in range(start, stop, step)]
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
        units = [(i, self.units[i].start, self.units[i].stop) for i in group]
        meta = BlockMetadata(num_rows=sum(stop - start for _, start, stop in units),
                             size_bytes=sum(self._bytes(self.units[i]) for i in group),
                             input_files=[file.url], exec_stats=None)
        fs, columns = self.fs, self.columns
        return ReadTask(lambda: read_units(fs, file, units, columns), meta)


def read_units(fs: fsspec.AbstractFileSystem, file: InputFile, units: list[tuple[int, int, int]],
               columns: list[str]) -> Iterator[pa.Table]:
    """Per (index, start, stop) of `file`, its rows with `_shard` = index, `_row` = the row's
    index in the file and `path` = the URL.
    Units come in row order; each row group is read once."""
    starts = [0, *accumulate(file.row_groups or (file.num_rows,))]
    loaded: dict[int, pa.Table] = {}
    with fs.open(file.path, "rb") as f:
        parquet = pq.ParquetFile(f)
        for index, start, stop in units:
            first = bisect.bisect_right(starts, start) - 1
            last = bisect.bisect_left(starts, stop) - 1
            for group in [g for g in loaded if g < first]:
                del loaded[group]
            for group in range(first, last + 1):
                if group not in loaded:
                    loaded[group] = parquet.read_row_group(group, columns=columns)
            rows = pa.concat_tables([loaded[g] for g in range(first, last + 1)])
            rows = rows.slice(start - starts[first], stop - start)
            yield (rows.append_column(SHARD, pa.array(np.full(len(rows), index, np.int32)))
                   .append_column(ROW, pa.array(np.arange(start, stop, dtype=np.int64)))
                   .append_column(PATH_COLUMN, pa.array([file.url] * len(rows), pa.string())))
