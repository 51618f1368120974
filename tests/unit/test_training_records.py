"""Training records as the stages read them (evisrag_core/data/schema.py): texts kept verbatim, markers kept, the
SFT system turn kept, and the bare-question rule decided by the field (`prompt` verbatim, `query` wrapped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from evisrag_core.data.schema import check_rl_record, parse_rl_record, parse_sft_record, rl_user_text
from evisrag_core.io import BadRecordError
from evisrag_core.prompts import build_messages, user_turn
from evisrag_core.rsgrpo.rollout import PromptEncoder

TAGGED = "<evidence>[1]: red</evidence><answer>red</answer>"


@pytest.fixture
def pages(tmp_path: Path) -> list[str]:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (28, 28), (200, 30, 30)).save(tmp_path / name)
    return ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "Steps…\nQuestion: q\n<image><image>"}, ("Steps…\nQuestion: q\n<image><image>", False)),
        ({"prompt": "whole text", "query": "q"}, ("whole text", False)),  # `prompt` wins: the reference's key
        ({"query": "What colour?"}, ("What colour?", True)),  # a bare question: the template wraps it
        ({"query": 3}, (None, True)),
        ({}, (None, False)),
    ],
)
def test_the_field_decides_whether_an_rl_record_holds_a_bare_question(
    row: dict[str, Any], expected: tuple[str | None, bool]
) -> None:
    assert rl_user_text(row) == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "<image>q", "image": ["a"], "answer": TAGGED}, "query has 1 <image> for 1 images"),
        ({"prompt": "<image>q", "image": ["a", "b"], "answer": TAGGED}, "prompt has 1 <image> for 2 images"),
        ({"image": ["a"], "answer": TAGGED}, "needs 'prompt'"),
    ],
)
def test_bad_rl_texts_are_refused(row: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRecordError, match=message):
        check_rl_record(row, "rl.jsonl:1")


def test_an_rl_prompt_reaches_the_model_verbatim_and_a_bare_query_wrapped(tmp_path: Path, pages: list[str]) -> None:
    encoder = PromptEncoder(None, "repository", (3136, 12544), 15000)  # messages() needs no processor
    whole = parse_rl_record({"prompt": "<image>p1 <image>p2", "image": pages, "answer": TAGGED}, tmp_path, "w")
    assert (whole.text, whole.bare_question) == ("<image>p1 <image>p2", False)
    paths = [str(tmp_path / p) for p in pages]
    assert encoder.messages(whole) == [user_turn("<image>p1 <image>p2", paths, 3136, 12544)]
    bare = parse_rl_record({"query": "Which?", "image": pages, "answer": TAGGED}, tmp_path, "w")
    assert bare.bare_question
    assert encoder.messages(bare) == build_messages("Which?", paths, "repository", 3136, 12544)


def test_an_sft_record_keeps_its_system_turn_and_markers(tmp_path: Path, pages: list[str]) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>first, then <image>"},
        {"role": "assistant", "content": "r"},
    ]
    conversation = parse_sft_record({"id": "s", "messages": messages, "images": pages}, tmp_path, "w")
    assert (conversation.system, conversation.user_text, conversation.response) == (
        "Be brief.",
        "<image>first, then <image>",
        "r",
    )
    without = parse_sft_record({"id": "s", "messages": messages[1:], "images": pages}, tmp_path, "w")
    assert without.system is None
