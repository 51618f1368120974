"""`evisrag prompt`'s rendering (evisrag_core/inspect_prompt.py): image pads collapsed, loss-carrying tokens marked."""

from __future__ import annotations

import pytest

from evisrag_core.inspect_prompt import collapse_image_pads, loss_runs, mark_loss

PAD = "<|image_pad|>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"<|vision_start|>{PAD * 64}<|vision_end|>", f"<|vision_start|>{PAD}×64<|vision_end|>"),
        (f"a{PAD}b", f"a{PAD}×1b"),
        (f"{PAD * 2}x{PAD * 3}", f"{PAD}×2x{PAD}×3"),
        ("no image here", "no image here"),
    ],
)
def test_collapse_image_pads(text: str, expected: str) -> None:
    assert collapse_image_pads(text) == expected


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([("<answer>", True), ("x", True), ("<|im_end|>", True), ("\n", False)], "⟦<answer>x<|im_end|>⟧\n"),
        ([("a", False), ("b", True), ("c", False), ("d", True)], "a⟦b⟧c⟦d⟧"),
        ([("a", False)], "a"),
        ([], ""),
    ],
)
def test_mark_loss(pieces: list[tuple[str, bool]], expected: str) -> None:
    assert mark_loss(pieces) == expected


@pytest.mark.parametrize(
    ("ids", "labels", "expected"),
    [
        ([1, 2, 3, 4], [-100, 2, 3, -100], [([1], False), ([2, 3], True), ([4], False)]),
        ([1, 2], [1, 2], [([1, 2], True)]),
        ([], [], []),
    ],
)
def test_loss_runs(ids: list[int], labels: list[int], expected: list[tuple[list[int], bool]]) -> None:
    assert loss_runs(ids, labels) == expected
