"""Micro-batches of the update (evisrag_core/rsgrpo/packing.py): fixed runs of m responses, and the reference's
token-budget packing (k = ceil(tokens / budget) balanced sets, run largest Σ length² first)."""

from __future__ import annotations

import pytest

from evisrag_core.rsgrpo.packing import (
    balanced_partition,
    micro_batch_count,
    micro_batches,
    token_budget_micro_batches,
)


@pytest.mark.parametrize(
    ("rows", "size", "expected"),
    [
        ([0, 1, 2, 3, 4], 2, [[0, 1], [2, 3], [4]]),
        ([0, 1, 2, 3, 4], 0, [[0, 1, 2, 3, 4]]),  # 0: the whole batch
        ([0, 1, 2, 3], 1, [[0], [1], [2], [3]]),
        ([4, 5, 6, 7], 2, [[4, 5], [6, 7]]),  # a rank's share: its own row ids
    ],
)
def test_fixed_micro_batches(rows: list[int], size: int, expected: list[list[int]]) -> None:
    assert micro_batches(rows, size) == expected


@pytest.mark.parametrize(
    ("lengths", "budget", "count"),
    [
        ([100, 100, 100, 100], 250, 2),  # ceil(400 / 250)
        ([100, 100, 100, 100], 400, 1),  # exactly one budget
        ([100, 100, 100, 100], 399, 2),
        ([300, 300], 300, 2),
        ([10, 10, 10], 11, 3),  # ceil(30 / 11) = 3
        ([1, 1, 1], 1, 3),  # never more micro-batches than rows
        ([], 100, 0),
    ],
)
def test_micro_batch_count(lengths: list[int], budget: int, count: int) -> None:
    assert micro_batch_count(lengths, budget) == count


def test_a_row_longer_than_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match=r"301 tokens, over rsgrpo.micro_batch_tokens=300"):
        micro_batch_count([10, 301], 300)


def test_largest_differencing_by_hand() -> None:
    # lengths 10, 20, 30, 40 into 2 sets. Pop by largest spread: {40} with {30} → ({40}, {30}), spread 10; {20}
    # (spread 20) with it → ({20, 30}, {40}), spread 10; of the two spread-10 partitions the one whose largest set
    # is larger goes first → ({20, 30} + {}, {40} + {10}) = two sets of 50.
    assert sorted(balanced_partition([10, 20, 30, 40], 2)) == [[0, 3], [1, 2]]


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        # 100 tokens, budget 50 → 2 sets of 50; [0, 3] runs first (10² + 40² = 1700 > 20² + 30² = 1300)
        ([10, 20, 30, 40], 50, [[0, 3], [1, 2]]),
        ([10, 20, 30, 40], 100, [[0, 1, 2, 3]]),  # one micro-batch holds everything, rows in batch order
        ([10, 20, 30, 40], 10**6, [[0, 1, 2, 3]]),
        # one row each; equal Σ length² → the larger first row runs first, as the reference sorts them
        ([9, 9, 9], 9, [[2], [1], [0]]),
        # k = ceil(17 / 9) = 2: {9} against {5, 3}; 81 > 25 + 9
        ([3, 9, 5], 9, [[1], [0, 2]]),
        # k = ceil(120 / 70) = 2: the 50s pair first ({1} vs {0}, the larger row first on a tie), then the 10s, then
        # the two partitions' sets cross: {1, 2} and {0, 3}; equal Σ length² → the larger first row runs first
        ([50, 50, 10, 10], 70, [[1, 2], [0, 3]]),
    ],
)
def test_token_budget_micro_batches(lengths: list[int], budget: int, expected: list[list[int]]) -> None:
    assert token_budget_micro_batches(lengths, budget) == expected


def test_packing_maps_positions_to_a_ranks_row_ids() -> None:
    assert micro_batches([8, 9, 10, 11], 0, budget=50, lengths=[10, 20, 30, 40]) == [[8, 11], [9, 10]]


def test_ranks_agree_on_the_largest_count() -> None:
    # this rank alone would need one micro-batch; another rank needed two, so this one runs two as well
    assert micro_batches([4, 5, 6], 0, budget=1000, lengths=[10, 20, 30]) == [[4, 5, 6]]
    assert micro_batches([4, 5, 6], 0, budget=1000, lengths=[10, 20, 30], count=2) == [[6], [4, 5]]


@pytest.mark.parametrize(("lengths", "k"), [([1, 2], 3), ([1, 2], 0)])
def test_an_impossible_partition_is_refused(lengths: list[int], k: int) -> None:
    with pytest.raises(ValueError, match="non-empty micro-batches"):
        balanced_partition(lengths, k)


def test_every_row_lands_in_exactly_one_micro_batch() -> None:
    lengths = [(7 * i) % 23 + 1 for i in range(37)]
    packed = token_budget_micro_batches(lengths, budget=60)
    assert sorted(row for rows in packed for row in rows) == list(range(37))
    assert len(packed) == micro_batch_count(lengths, 60) == 8  # ceil(444 tokens / 60)
    sums = [sum(lengths[r] for r in rows) for rows in packed]
    assert max(sums) - min(sums) <= max(lengths)  # balanced
