"""What the quality gates read from an output, in one pass over its part files, one Ray task
per file: each score column's health, a fine histogram of the final score, each query's top k
(hash-partitioned by query_id, for the drift join with a baseline) and, for distillation
records, the teachers' per-query rank agreement. The driver only merges small partials.

Files hold whole queries (the rank and label stages write them so), so ties and agreements
are counted within each file.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from jobs.schema import DOC_ID, QUERY_ID, RANK

FINE_BINS = 1 << 16  # the top 16 bits of a float32: sign, exponent and 7 mantissa bits (bf16's grid)
TOPK_ROWS_PER_BUCKET = 5_000_000  # top-k rows per partition of the drift join
OVERLAP_BINS = 20


@dataclass
class Health:
    """One score column's health, mergeable across files (Chan et al.'s parallel variance)."""

    pairs: int = 0  # scored pairs (non-null scores)
    non_finite: int = 0  # NaN or infinite scores among them
    tied: int = 0  # pairs whose score equals another pair's of the same query
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    low: float = math.inf
    high: float = -math.inf

    @classmethod
    def of(cls, codes: np.ndarray, values: np.ndarray) -> Health:
        finite = np.isfinite(values)
        v = values[finite].astype(np.float64)
        mean = float(v.mean()) if v.size else 0.0
        return cls(int(values.size), int((~finite).sum()), tied_pairs(codes[finite], v), mean,
                   float(((v - mean) ** 2).sum()), float(v.min()) if v.size else math.inf,
                   float(v.max()) if v.size else -math.inf)

    def merge(self, o: Health) -> Health:
        a, b = self.pairs - self.non_finite, o.pairs - o.non_finite
        n = a + b
        delta = o.mean - self.mean
        mean = self.mean + delta * b / n if n else 0.0
        m2 = self.m2 + o.m2 + delta * delta * a * b / n if n else 0.0
        return Health(self.pairs + o.pairs, self.non_finite + o.non_finite, self.tied + o.tied, mean, m2,
                      min(self.low, o.low), max(self.high, o.high))

    @property
    def std(self) -> float:
        finite = self.pairs - self.non_finite
        return math.sqrt(self.m2 / finite) if finite else 0.0

    @property
    def tied_share(self) -> float:
        return self.tied / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"pairs": self.pairs, "non_finite": self.non_finite, "tied_share": round(self.tied_share, 6),
                "std": self.std, "min": self.low if self.pairs > self.non_finite else None,
                "max": self.high if self.pairs > self.non_finite else None}


def tied_pairs(codes: np.ndarray, values: np.ndarray) -> int:
    """How many pairs share their exact score with another pair of the same query (`codes`)."""
    if values.size < 2:
        return 0
    c, v = codes, values
    if not _ranked_order(c, v):  # (a ranked output is already in that order: no sort)
        order = np.lexsort((values, codes))
        c, v = codes[order], values[order]
    same = (c[1:] == c[:-1]) & (v[1:] == v[:-1])
    tied = np.zeros(values.size, dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    return int(tied.sum())


def _ranked_order(codes: np.ndarray, values: np.ndarray) -> bool:
    """Whether each query's rows are contiguous (dictionary codes come in order of first
    appearance, so contiguous is non-decreasing) and sorted by value, descending."""
    within = codes[1:] == codes[:-1]
    return bool(np.all(codes[1:] >= codes[:-1]) and np.all(values[1:][within] <= values[:-1][within]))


def fine_bins(values: np.ndarray) -> np.ndarray:
    """Each finite float32 value's bin among FINE_BINS, in the order of the values."""
    bits = values.astype(np.float32).view(np.uint32)
    ordered = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return (ordered >> 16).astype(np.int64)


def ranks_within(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's rank within its query (ties get their mean rank), as scipy's rankdata."""
    order = np.lexsort((values, codes))
    c, v = codes[order], values[order]
    start = np.r_[True, (c[1:] != c[:-1]) | (v[1:] != v[:-1])]  # a run of equal values in one query
    run = np.cumsum(start) - 1
    first_of_query = np.r_[True, c[1:] != c[:-1]]
    query_start = np.maximum.accumulate(np.where(first_of_query, np.arange(c.size), 0))
    position = np.arange(c.size) - query_start  # 0-based position within the query
    run_mean = np.bincount(run, weights=position) / np.bincount(run)
    ranks = np.empty(c.size)
    ranks[order] = run_mean[run] + 1
    return ranks


def spearman_by_query(codes: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(sum over queries of Spearman's rho between a and b, queries counted): queries with
    fewer than 2 candidates, or where either side is constant, have no rho and are left out."""
    ra, rb = ranks_within(codes, a), ranks_within(codes, b)
    n = np.bincount(codes).astype(np.float64)
    safe = np.maximum(n, 1)
    ma, mb = np.bincount(codes, ra) / safe, np.bincount(codes, rb) / safe
    da, db = ra - ma[codes], rb - mb[codes]
    cov, va, vb = np.bincount(codes, da * db), np.bincount(codes, da * da), np.bincount(codes, db * db)
    ok = (n >= 2) & (va > 0) & (vb > 0)
    return float((cov[ok] / np.sqrt(va[ok] * vb[ok])).sum()), int(ok.sum())


def bucket_of(query_ids: pa.Array, buckets: int) -> np.ndarray:
    """A stable partition of each query id (CRC-32 of its UTF-8 bytes, the same on every node)."""
    encoded = pc.dictionary_encode(query_ids).combine_chunks() if isinstance(query_ids, pa.ChunkedArray) \
        else pc.dictionary_encode(query_ids)
    per_id = np.array([zlib.crc32(q.encode()) % buckets for q in encoded.dictionary.to_pylist()], dtype=np.int64)
    return per_id[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_id) else np.zeros(0, np.int64)


@dataclass
class FileStats:
    health: dict[str, Health] = field(default_factory=dict)  # per score column
    histogram: np.ndarray | None = None  # fine histogram of the drift column
    agreement: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)  # teachers a, b: sum, n

    def merge(self, o: FileStats) -> FileStats:
        health = dict(self.health)
        for name, h in o.health.items():
            health[name] = health[name].merge(h) if name in health else h
        hist = o.histogram if self.histogram is None else self.histogram + (
            o.histogram if o.histogram is not None else 0)
        agreement = dict(self.agreement)
        for pair, (s, n) in o.agreement.items():
            s0, n0 = agreement.get(pair, (0.0, 0))
            agreement[pair] = (s0 + s, n0 + n)
        return FileStats(health, hist, agreement)


def _flat(table: pa.Table, nested: list[str]) -> pa.Table:
    """Distillation records (a row per query, its candidates in a list) as one row per pair."""
    flat, parent = pc.list_flatten(table["candidates"]), pc.list_parent_indices(table["candidates"])
    return pa.table({QUERY_ID: table[QUERY_ID].take(parent), **{t: pc.struct_field(flat, t) for t in nested}})


def file_stats(fs: fsspec.AbstractFileSystem, path: str, columns: list[str], drift: str | None, k: int,
               buckets: int, nested: list[str] | None = None, agree: bool = False) -> tuple:
    """One file's FileStats, then its top-k rows (query_id, doc_id, rank) in `buckets` tables."""
    with fs.open(path, "rb") as f:
        present = pq.ParquetFile(f).schema_arrow.names
        wanted = [QUERY_ID, "candidates"] if nested else [c for c in (QUERY_ID, DOC_ID, RANK, *columns)
                                                          if c in present]
        table = pq.read_table(f, columns=wanted)
    if nested:
        table = _flat(table, nested)
    codes = pc.dictionary_encode(table[QUERY_ID]).combine_chunks().indices.to_numpy(zero_copy_only=False)
    stats = FileStats()
    for name in columns:
        if name not in table.column_names:
            continue
        column = table[name]
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        numbers = column if pa.types.is_floating(column.type) else pc.cast(column, pa.float64())
        values = numbers.to_numpy(zero_copy_only=False)[valid]
        stats.health[name] = Health.of(codes[valid], values)
        if name == drift:
            finite = values[np.isfinite(values)]
            stats.histogram = np.bincount(fine_bins(finite), minlength=FINE_BINS)
    if agree and nested:
        for i, a in enumerate(nested):
            for b in nested[i + 1:]:
                stats.agreement[(a, b)] = spearman_by_query(
                    codes, table[a].to_numpy(zero_copy_only=False), table[b].to_numpy(zero_copy_only=False))
    parts: list[pa.Table] = []
    if buckets:
        top = table.filter(pc.less_equal(table[RANK], k)).select([QUERY_ID, DOC_ID, RANK])
        which = bucket_of(top[QUERY_ID], buckets)
        parts = [top.filter(pa.array(which == b)) for b in range(buckets)]
    return (stats, *parts)


@dataclass
class Drift:
    """Per-query agreement of this run's top k with a baseline's, over the queries both have."""

    shared: int = 0  # queries in both
    only_new: int = 0
    only_baseline: int = 0
    overlap_sum: float = 0.0
    top1_changed: int = 0
    overlap_histogram: np.ndarray = field(default_factory=lambda: np.zeros(OVERLAP_BINS + 1, dtype=np.int64))

    def merge(self, o: Drift) -> Drift:
        return Drift(self.shared + o.shared, self.only_new + o.only_new, self.only_baseline + o.only_baseline,
                     self.overlap_sum + o.overlap_sum, self.top1_changed + o.top1_changed,
                     self.overlap_histogram + o.overlap_histogram)

    @property
    def mean_overlap(self) -> float:
        return self.overlap_sum / self.shared if self.shared else 1.0

    @property
    def top1_changed_share(self) -> float:
        return self.top1_changed / self.shared if self.shared else 0.0


def drift_of(k: int, new: pa.Table, base: pa.Table) -> Drift:
    """Top-k overlap per query: |top-k ∩ baseline top-k| / min(k, either list's length), so a
    query with fewer than k candidates scores 1 when both lists agree; and whether rank 1 moved."""
    count_new = new.group_by(QUERY_ID).aggregate([(DOC_ID, "count")])
    count_base = base.group_by(QUERY_ID).aggregate([(DOC_ID, "count")]).rename_columns([QUERY_ID, "n_base"])
    both = count_new.join(count_base, QUERY_ID, join_type="inner")
    common = new.select([QUERY_ID, DOC_ID]).join(base.select([QUERY_ID, DOC_ID]), [QUERY_ID, DOC_ID],
                                                 join_type="inner")
    inter = common.group_by(QUERY_ID).aggregate([(DOC_ID, "count")]).rename_columns([QUERY_ID, "inter"])
    both = both.join(inter, QUERY_ID, join_type="left outer")
    n = np.minimum(np.minimum(both[f"{DOC_ID}_count"].to_numpy(), both["n_base"].to_numpy()), k)
    got = both["inter"].fill_null(0).to_numpy(zero_copy_only=False)
    overlap = np.where(n > 0, got / np.maximum(n, 1), 1.0)
    firsts = [t.filter(pc.equal(t[RANK], 1)).select([QUERY_ID, DOC_ID]) for t in (new, base)]
    top1 = firsts[0].join(firsts[1].rename_columns([QUERY_ID, "base_doc"]), QUERY_ID, join_type="inner")
    changed = int(pc.sum(pc.not_equal(top1[DOC_ID], top1["base_doc"])).as_py() or 0) if len(top1) else 0
    hist = np.bincount(np.rint(overlap * OVERLAP_BINS).astype(np.int64), minlength=OVERLAP_BINS + 1)
    return Drift(len(both), len(count_new) - len(both), len(count_base) - len(both), float(overlap.sum()),
                 changed, hist)


@ray.remote
def _files_stats(fs: fsspec.AbstractFileSystem, paths: list[str], *args: object) -> tuple | FileStats:
    """Several files' stats, merged, and their top-k tables per bucket (one task: a task per
    small file would cost more in scheduling than the reading)."""
    outs = [file_stats(fs, path, *args) for path in paths]  # type: ignore[arg-type]
    stats = FileStats()
    for out in outs:
        stats = stats.merge(out[0])
    parts = [pa.concat_tables(tables) for tables in zip(*(out[1:] for out in outs), strict=True)]
    return (stats, *parts) if parts else stats  # (one return: Ray hands the value over as it is)


@ray.remote
def _drift(k: int, parts: int, *tables: pa.Table) -> Drift:
    return drift_of(k, pa.concat_tables(tables[:parts]), pa.concat_tables(tables[parts:]))


TASKS_PER_CPU = 2  # stats tasks per CPU of the cluster


def buckets_for(rows: int) -> int:
    """Partitions of the drift join for an output of `rows` pairs (top k of each query: at most all)."""
    return max(1, math.ceil(rows / TOPK_ROWS_PER_BUCKET / 10))


@dataclass
class PendingStats:
    """The stats tasks of some output files, submitted: FileStats refs, and per bucket the
    refs of the top-k tables (what a drift join takes, without waiting for the stats)."""

    stats: list
    parts: list[list]

    def result(self) -> FileStats:
        merged = FileStats()
        for stats in ray.get(self.stats):
            merged = merged.merge(stats)
        return merged


def submit_stats(fs: fsspec.AbstractFileSystem, files: list[str], columns: list[str], drift: str | None, k: int,
                 buckets: int, nested: list[str] | None = None, agree: bool = False) -> PendingStats:
    """Tasks reading `files`, about TASKS_PER_CPU per CPU of the cluster, each a run of files."""
    tasks = max(1, min(len(files), TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1))))
    groups = [files[i::tasks] for i in range(tasks)]
    refs = [_files_stats.options(num_returns=1 + buckets).remote(fs, g, columns, drift, k, buckets, nested, agree)
            for g in groups if g]
    refs = [r if isinstance(r, list) else [r] for r in refs]
    return PendingStats([r[0] for r in refs], [[r[1 + b] for r in refs] for b in range(buckets)])


def read_stats(fs: fsspec.AbstractFileSystem, files: list[str], columns: list[str], drift: str | None, k: int,
               buckets: int, nested: list[str] | None = None, agree: bool = False) -> tuple[FileStats, list]:
    """Every file's stats, merged, and per bucket the object refs of its top-k tables."""
    pending = submit_stats(fs, files, columns, drift, k, buckets, nested, agree)
    return pending.result(), pending.parts


def submit_drift(k: int, new_parts: list[list], base_parts: list[list]) -> list:
    """Join this run's top k with the baseline's, bucket by bucket, in Ray tasks (submitted)."""
    return [_drift.remote(k, len(n), *n, *b) for n, b in zip(new_parts, base_parts, strict=True)]


def gather_drift(refs: list) -> Drift:
    total = Drift()
    for d in ray.get(refs):
        total = total.merge(d)
    return total


def psi_and_ks(new: np.ndarray, base: np.ndarray, groups: int = 10) -> tuple[float, float]:
    """Population stability index over the baseline's deciles (bins of equal baseline mass,
    cut on the fine grid; a share of 0 counts as 1e-4), and the Kolmogorov-Smirnov distance
    of the two fine histograms."""
    if new.sum() == 0 or base.sum() == 0:
        return 0.0, 0.0
    cb, cn = np.cumsum(base) / base.sum(), np.cumsum(new) / new.sum()
    ks = float(np.abs(cb - cn).max())
    cuts = np.unique(np.searchsorted(cb, np.arange(1, groups) / groups, side="left"))
    edges = np.r_[0, cuts + 1, FINE_BINS]
    edges = np.unique(edges)
    pb = np.add.reduceat(base, edges[:-1]) / base.sum()
    pn = np.add.reduceat(new, edges[:-1]) / new.sum()
    pb, pn = np.maximum(pb, 1e-4), np.maximum(pn, 1e-4)
    return float(((pn - pb) * np.log(pn / pb)).sum()), ks
