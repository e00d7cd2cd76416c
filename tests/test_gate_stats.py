"""The gates' figures against independent references: numpy's moments, scipy's rankdata,
spearmanr and ks_2samp, a hand-computed PSI, and a plain-Python top-k overlap."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
from fsspec.implementations.local import LocalFileSystem

from jobs.gate_stats import (
    FINE_BINS,
    Health,
    drift_of,
    file_stats,
    fine_bins,
    psi_and_ks,
    ranks_within,
    spearman_by_query,
    tied_pairs,
)

RNG = np.random.default_rng(7)


def test_health_merged_over_parts_is_the_whole_columns_moments() -> None:
    values = RNG.normal(3.0, 0.01, 10_000)  # (a narrow spread on a large mean: cancellation would show)
    codes = np.repeat(np.arange(100), 100)
    parts = [Health.of(codes[i:i + 1234], values[i:i + 1234]) for i in range(0, 10_000, 1234)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged.pairs == 10_000
    assert merged.std == pytest.approx(float(np.std(values)), rel=1e-9)
    assert merged.mean == pytest.approx(float(values.mean()), rel=1e-12)
    assert (merged.low, merged.high) == (values.min(), values.max())


def test_non_finite_scores_are_counted_and_left_out_of_the_moments() -> None:
    h = Health.of(np.zeros(4, np.int64), np.array([1.0, np.nan, 3.0, np.inf]))
    assert (h.pairs, h.non_finite, h.std) == (4, 2, 1.0)


def test_tied_pairs_counts_pairs_sharing_a_score_within_their_query_only() -> None:
    codes = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    values = np.array([0.5, 0.5, 0.2, 0.5, 0.7, 0.1, 0.1, 0.1])
    brute = sum(any(codes[j] == codes[i] and values[j] == values[i] for j in range(8) if j != i) for i in range(8))
    assert tied_pairs(codes, values) == brute == 5


def test_tied_pairs_is_the_same_on_a_ranked_output_and_in_any_order() -> None:
    rng = np.random.default_rng(3)
    codes, values = rng.integers(0, 50, 2000), rng.integers(0, 30, 2000).astype(np.float64)
    _, inverse, counts = np.unique(np.stack([codes, values]), axis=1, return_inverse=True, return_counts=True)
    expected = int((counts[inverse.ravel()] > 1).sum())
    ranked = np.lexsort((-values, codes))  # (as a ranked output is written: by query, best first)
    _, codes_in_order = np.unique(codes[ranked], return_inverse=True)
    assert tied_pairs(codes, values) == tied_pairs(codes_in_order, values[ranked]) == expected


def test_ranks_and_spearman_per_query_match_scipy() -> None:
    codes = np.repeat(np.arange(30), 40)
    a = np.round(RNG.normal(size=codes.size), 1)  # (rounded: ties)
    b = a + RNG.normal(scale=0.8, size=codes.size)
    ranks = ranks_within(codes, a)
    total, n = spearman_by_query(codes, a, b)
    expected = []
    for q in range(30):
        mask = codes == q
        np.testing.assert_allclose(ranks[mask], scipy.stats.rankdata(a[mask]))
        expected.append(scipy.stats.spearmanr(a[mask], b[mask]).statistic)
    assert n == 30
    assert total / n == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_spearman_leaves_out_queries_without_a_ranking() -> None:
    codes = np.array([0, 0, 0, 1, 2, 2])
    a = np.array([1.0, 2.0, 3.0, 5.0, 1.0, 1.0])  # query 1: one candidate; query 2: constant
    b = np.array([3.0, 2.0, 1.0, 5.0, 2.0, 3.0])
    assert spearman_by_query(codes, a, b) == (-1.0, 1)


def test_fine_bins_keep_the_order_of_the_values() -> None:
    values = np.sort(np.concatenate([RNG.normal(scale=10, size=5000), [-np.finfo(np.float32).max, -0.0, 0.0,
                                                                         1e-30, np.finfo(np.float32).max]]))
    bins = fine_bins(values.astype(np.float32))
    assert (np.diff(bins) >= 0).all() and bins.min() >= 0 and bins.max() < FINE_BINS


def test_ks_of_the_fine_histograms_is_scipys_on_values_the_grid_holds_exactly() -> None:
    new, base = RNG.integers(0, 200, 3000).astype(np.float32), RNG.integers(20, 220, 2000).astype(np.float32)
    hist = [np.bincount(fine_bins(v), minlength=FINE_BINS) for v in (new, base)]
    psi, ks = psi_and_ks(*hist)
    assert ks == pytest.approx(scipy.stats.ks_2samp(new, base).statistic, abs=1e-12)
    assert psi_and_ks(hist[1], hist[1]) == (0.0, 0.0)
    assert psi > 0.1


def test_psi_is_computed_over_the_baselines_deciles() -> None:
    base = np.arange(1000, dtype=np.float32)  # deciles: 0-99, 100-199, ...
    new = np.concatenate([np.arange(500, dtype=np.float32), np.full(500, 950, np.float32)])
    hist = [np.bincount(fine_bins(v), minlength=FINE_BINS) for v in (new, base)]
    p_new = np.array([0.1] * 5 + [1e-4] * 4 + [0.5])  # (empty bins count as 1e-4)
    expected = float(((p_new - 0.1) * np.log(p_new / 0.1)).sum())
    assert psi_and_ks(*hist)[0] == pytest.approx(expected, rel=1e-9)


def reference_overlap(new: list[tuple[str, str, int]], base: list[tuple[str, str, int]], k: int) -> tuple:
    def tops(rows: list[tuple[str, str, int]]) -> dict[str, list[tuple[int, str]]]:
        out: dict[str, list[tuple[int, str]]] = {}
        for q, d, r in rows:
            if r <= k:
                out.setdefault(q, []).append((r, d))
        return {q: sorted(v) for q, v in out.items()}
    n, b = tops(new), tops(base)
    shared = sorted(set(n) & set(b))
    overlaps = [len({d for _, d in n[q]} & {d for _, d in b[q]}) / min(k, len(n[q]), len(b[q])) for q in shared]
    changed = sum(n[q][0][1] != b[q][0][1] for q in shared)
    return len(shared), float(np.mean(overlaps)), changed


def test_top_k_overlap_and_top1_changes_match_a_plain_reference() -> None:
    k, new, base = 5, [], []
    for q in range(40):
        docs = [f"d{i}" for i in range(RNG.integers(2, 12))]
        for rows in (new, base):
            order = RNG.permutation(len(docs)) if q % 3 else np.arange(len(docs))
            rows += [(f"q{q}", docs[i], r + 1) for r, i in enumerate(order)]
    new += [("only-new", "x", 1)]
    table = [pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                       "rank": pa.array([r[2] for r in rows], pa.int32())}) for rows in (new, base)]
    tops = [t.filter(pa.compute.less_equal(t["rank"], k)) for t in table]
    drift = drift_of(k, *tops)
    shared, overlap, changed = reference_overlap(new, base, k)
    assert (drift.shared, drift.top1_changed, drift.only_new) == (shared, changed, 1)
    assert drift.mean_overlap == pytest.approx(overlap, abs=1e-12)
    assert drift.overlap_histogram.sum() == shared


def test_identical_rankings_have_full_overlap_even_with_short_lists() -> None:
    t = pa.table({"query_id": ["a", "a", "b"], "doc_id": ["x", "y", "z"], "rank": pa.array([1, 2, 1], pa.int32())})
    drift = drift_of(10, t, t)
    assert (drift.mean_overlap, drift.top1_changed_share, drift.shared) == (1.0, 0.0, 2)


def test_one_file_read_gives_health_histogram_and_top_k_buckets(tmp_path) -> None:
    n = 300
    table = pa.table({"query_id": [f"q{i // 30}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)],
                      "score": pa.array(np.linspace(-2, 2, n), pa.float32()),
                      "rank": pa.array([30 - i % 30 for i in range(n)], pa.int32())})
    pq.write_table(table, tmp_path / "part-00000.parquet")
    stats, *parts = file_stats(LocalFileSystem(), str(tmp_path / "part-00000.parquet"), ["score"], "score", 3, 4)
    h = stats.health["score"]
    assert h.pairs == n and h.tied == 0
    assert h.std == pytest.approx(float(np.std(table["score"].to_numpy().astype(np.float64))), rel=1e-9)
    assert stats.histogram.sum() == n
    assert sum(len(p) for p in parts) == 10 * 3  # (top 3 of each of 10 queries, over 4 buckets)
    assert {q for p in parts for q in p["query_id"].to_pylist()} == {f"q{i}" for i in range(10)}
    assert not math.isnan(h.std)
