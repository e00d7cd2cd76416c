from __future__ import annotations

import numpy as np
import pytest

from reranker_actors.batching import pad, token_budget_batches


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_batches_cover_every_row_once_within_the_token_budget(budget: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=1000)
    seen = []
    for idx in token_budget_batches(lengths, budget):
        assert len(idx) * lengths[idx].max() <= budget
        seen += idx.tolist()
    assert sorted(seen) == list(range(1000))


def test_batches_group_similar_lengths_longest_first() -> None:
    lengths = np.array([5, 50, 6, 49, 7, 48])
    # Sorted 50, 49, 48, 7, 6, 5: two rows of <= 50 fit in 100 tokens, then two of <= 48,
    # then the short ones together.
    batches = [b.tolist() for b in token_budget_batches(lengths, 100)]
    assert batches == [[1, 3], [5, 4], [2, 0]]


def test_a_row_longer_than_the_budget_still_gets_its_own_batch() -> None:
    assert [b.tolist() for b in token_budget_batches(np.array([10, 300]), 100)] == [[1], [0]]


def test_pad_right_pads_to_the_longest() -> None:
    out = pad([[1, 2, 3], [4]], pad_value=0)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]] and out.dtype == np.int64
