"""Over-long inputs cut as the reference cuts them (evisrag_core/truncation.py): LLaMA-Factory's lengths for SFT, the
tokens an SFT cut keeps, and the refusal to cut through an image."""

from __future__ import annotations

import pytest
import torch

from evisrag_core.truncation import kept_positions, llamafactory_lengths, require_images_kept


@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [
        (100, 50, 1000, (100, 50)),  # fits: nothing cut
        (30000, 3000, 32000, (29000, 3000)),  # a short target is kept whole, the prompt cut
        (30000, 10000, 32000, (22000, 10000)),
        (1000, 40000, 32000, (1000, 31000)),  # a short prompt is kept whole, the answer cut
        (20000, 20000, 32000, (16000, 16000)),  # both long: cut in proportion
        (20000, 17000, 32000, (17298, 14702)),  # int(32000 · 17000 / 37000) = 14702
    ],
)
def test_llamafactory_lengths(source: int, target: int, cutoff: int, expected: tuple[int, int]) -> None:
    assert llamafactory_lengths(source, target, cutoff) == expected
    assert sum(expected) <= max(cutoff, source + target)


@pytest.mark.parametrize(
    ("total", "source", "lengths", "expected"),
    [
        (10, 6, (6, 4), list(range(10))),
        (10, 6, (4, 3), [0, 1, 2, 3, 6, 7, 8]),  # the prompt's end and the answer's end are cut
        (10, 6, (6, 0), [0, 1, 2, 3, 4, 5]),
    ],
)
def test_kept_positions_are_the_prompts_and_the_answers_first_tokens(
    total: int, source: int, lengths: tuple[int, int], expected: list[int]
) -> None:
    assert kept_positions(total, source, lengths).tolist() == expected


VISION = {5, 6, 7}  # vision start, image pad, vision end


@pytest.mark.parametrize(
    ("ids", "keep", "cut"),
    [
        ([1, 5, 6, 6, 7, 2, 3], 5, False),  # the image block ends at position 4: kept
        ([1, 5, 6, 6, 7, 2, 3], 4, True),  # its <|vision_end|> would be cut
        ([1, 5, 6, 6, 7, 2, 3], 2, True),  # inside the block
        ([1, 2, 3, 4], 2, False),  # no image
    ],
)
def test_a_cut_through_an_image_is_refused(ids: list[int], keep: int, cut: bool) -> None:
    if cut:
        with pytest.raises(ValueError, match=f"truncating to {keep} tokens would cut an image"):
            require_images_kept(torch.tensor(ids), keep, VISION, "record r")
    else:
        require_images_kept(torch.tensor(ids), keep, VISION, "record r")
