"""Micro-batches of an update: a fixed number of responses, or packed by a token budget as the reference packs them.

`rsgrpo.micro_batch_size: m` cuts the B responses into consecutive runs of m (0: one micro-batch). With
`rsgrpo.micro_batch_tokens: budget` the responses are packed the way the reference's actor does with
`dynamic_batching: true` (its `prepare_dynamic_batch`, read at OpenBMB/VisRAG f35d232):

    length_i   = prompt tokens + response tokens of row i (the row's attention mask: image tokens count, padding
                 does not)
    k          = min(rows, ceil(Σ_i length_i / budget))          (on several ranks: the largest k of any rank)
    partition  the rows into k sets with sums as equal as possible, by the largest differencing method
               (Karmarkar-Karp) with the reference's tie-breaks; each set's rows in ascending order
    order      the sets by (Σ length², first row), largest first: the order the micro-batches run in

k is the fewest micro-batches the budget allows, but a set is *balanced*, not capped: one may hold more than the
budget (the reference does not cap it either). In the released run the budget is
micro_batch_size_per_device_for_update (1) × the padded input width (max_prompt_length 15,000 + max_response_length
1,536) = 16,536 tokens (`configs/profiles/paper.yaml`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field


def micro_batches(
    rows: Sequence[int], size: int, budget: int = 0, lengths: Sequence[int] = (), count: int | None = None
) -> list[list[int]]:
    """The micro-batches of the batch rows `rows`, in the order they run: packed by `lengths` (one per row) when the
    token budget is set, else consecutive runs of `size` (0: one micro-batch). `count`: `token_budget_micro_batches`."""
    if budget:
        return [[rows[p] for p in packed] for packed in token_budget_micro_batches(lengths, budget, count)]
    return [[rows[p] for p in run] for run in fixed_micro_batches(len(rows), size)]


def fixed_micro_batches(batch: int, size: int) -> list[list[int]]:
    """Consecutive runs of `size` rows out of `batch` (size 0: all rows in one micro-batch)."""
    size = size or batch
    return [list(range(start, min(start + size, batch))) for start in range(0, batch, size)]


def micro_batch_count(lengths: Sequence[int], budget: int) -> int:
    """k = min(rows, ceil(Σ lengths / budget)): how many micro-batches the token budget asks for."""
    if not lengths:
        return 0
    longest = max(lengths)
    if longest > budget:
        raise ValueError(
            f"a response with its prompt is {longest} tokens, over rsgrpo.micro_batch_tokens={budget}; the budget must "
            "hold the longest prompt + response (the reference's: max_prompt_length + max_new_tokens)"
        )
    return min(len(lengths), -(-sum(lengths) // budget))


@dataclass
class _Part:
    """One set of a partition: its rows (index, length) in the order they joined, and their total length."""

    items: list[tuple[int, int]] = field(default_factory=list)
    total: int = 0

    def key(self) -> tuple[int, int, list[tuple[int, int]]]:
        return self.total, len(self.items), self.items  # the reference's order of two sets


class _Partial:
    """A partial k-way partition, its sets largest first. Ordered so that a min-heap pops the one with the largest
    spread (largest set - smallest set) first, ties broken by the larger largest set, as in the reference."""

    def __init__(self, parts: list[_Part]):
        self.parts = sorted(parts, key=_Part.key, reverse=True)

    @property
    def spread(self) -> int:
        return self.parts[0].total - self.parts[-1].total

    def __lt__(self, other: _Partial) -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return other.parts[0].key() < self.parts[0].key()

    def absorb(self, other: _Partial) -> None:
        """Pair this partition's largest set with the other's smallest, and so on down."""
        k = len(self.parts)
        for i, part in enumerate(self.parts):
            for index, length in other.parts[k - 1 - i].items:
                part.items.append((index, length))
                part.total += length
        self.parts = sorted(self.parts, key=_Part.key, reverse=True)


def balanced_partition(lengths: Sequence[int], k: int) -> list[list[int]]:
    """The rows 0..len-1 in k non-empty sets with sums as equal as the largest differencing method makes them; each
    set's rows ascending, the sets in the method's final order (largest sum first)."""
    if not 1 <= k <= len(lengths):
        raise ValueError(f"cannot split {len(lengths)} rows into {k} non-empty micro-batches")
    heap: list[_Partial] = []
    for length, index in sorted((length, index) for index, length in enumerate(lengths)):
        heapq.heappush(heap, _Partial([_Part([(index, length)], length)] + [_Part() for _ in range(k - 1)]))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.absorb(second)
        heapq.heappush(heap, first)
    return [sorted(index for index, _ in part.items) for part in heap[0].parts]


def token_budget_micro_batches(lengths: Sequence[int], budget: int, count: int | None = None) -> list[list[int]]:
    """Positions 0..len-1 of `lengths` packed into micro-batches by the token budget (module docstring), in the order
    they run. `count` overrides k (several ranks agree on the largest k; it must not exceed the rows)."""
    k = micro_batch_count(lengths, budget) if count is None else count
    if k == 0:
        return []
    sets = balanced_partition(lengths, k)
    return sorted(sets, key=lambda rows: (sum(lengths[r] ** 2 for r in rows), min(rows)), reverse=True)
