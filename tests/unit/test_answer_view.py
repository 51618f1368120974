"""What `evisrag answer` shows: the answer, each image's evidence, and the format problems, in words."""

from __future__ import annotations

import json

import pytest

from evisrag_core.answer_view import (
    ImageEvidence,
    answer_fields,
    format_warning,
    read_response,
    render_answer,
)
from evisrag_core.prompt_methods import get_method
from evisrag_core.rsgrpo.rewards import format_reward

EVIDENCE = get_method("evidence").tags
IMAGES = ["a.png", "b.png", "c.png"]
GOOD = (
    "<observe>three charts</observe>\n<evidence>[1]: 16% inspired [2]: no relevant information\n"
    "[3]: no relevant information</evidence>\n<think>16 - 13 = 3</think>\n<answer>3%</answer>"
)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (GOOD, ()),
        (GOOD.replace("<think>16 - 13 = 3</think>\n", ""), ("no <think> block",)),
        (GOOD.replace("</answer>", ""), ("<answer> is never closed",)),
        (GOOD + "<answer>4%</answer>", ("the <answer> block appears 2 times",)),
        (GOOD.replace("</think>", "</think></think>"), ("<think> appears 1×, </think> 2×",)),
        (
            "<observe>o</observe><think>t</think><evidence>[1]: a [2]: b [3]: c</evidence><answer>x</answer>",
            ("blocks out of order: expected observe, evidence, think, answer",),
        ),
        ("Sure! " + GOOD, ("text outside the blocks",)),
        (GOOD.replace("</evidence>\n", "</evidence>\nso: "), ("text outside the blocks",)),
        (GOOD.replace("[3]: no relevant information", ""), ("no evidence recorded for image [3]",)),
        (
            GOOD.replace("</evidence>", " [4]: more</evidence>"),
            ("evidence for [4], but 3 image(s) were given",),
        ),
        ("just 3%", ("no <observe> block", "no <evidence> block", "no <think> block", "no <answer> block")),
    ],
)
def test_format_problems_of_an_evidence_response(text: str, problems: tuple[str, ...]) -> None:
    view = read_response(text, IMAGES, EVIDENCE)
    assert view.problems == problems
    assert view.format_ok == (not problems)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "x" + GOOD,
        GOOD.replace("</answer>", ""),
        GOOD + "<answer>4%</answer>",
        GOOD.replace("\n<think>", "!<think>"),
    ],
)
def test_a_clean_evidence_response_is_what_the_format_reward_accepts(text: str) -> None:
    assert read_response(text, IMAGES, EVIDENCE).format_ok == bool(format_reward(text))


@pytest.mark.parametrize(
    ("method", "text", "problems"),
    [
        ("baseline", "<think>red square</think> <answer>red</answer>", ()),
        ("baseline", "Let me think. <think>red</think> so <answer>red</answer>", ()),  # only evidence is strict
        ("cocot", "<answer>red</answer>", ("no <think> block",)),
        ("ddcot", "Sub-questions: 1. which? Sub-answers: 1. red <answer>red</answer>", ()),
        ("ccot", "red", ("no <think> block", "no <answer> block")),
    ],
)
def test_a_baseline_is_checked_for_the_blocks_its_text_asks_for(
    method: str, text: str, problems: tuple[str, ...]
) -> None:
    view = read_response(text, IMAGES, get_method(method).tags)
    assert (view.problems, view.evidence) == (problems, ())


@pytest.mark.parametrize(
    ("text", "answer", "tagged"),
    [
        (GOOD, "3%", True),
        ("<answer> 3% ", "3%", True),  # unclosed: the rest of the text, as the evaluation reads it
        ("it is 3%", "it is 3%", False),  # no tags: the whole text
        ("<answer></answer>", "", True),
    ],
)
def test_the_answer_is_what_the_evaluation_scores(text: str, answer: str, tagged: bool) -> None:
    view = read_response(text, IMAGES, EVIDENCE)
    assert (view.answer, view.answer_tagged) == (answer, tagged)


def test_the_evidence_is_listed_per_image_with_its_name() -> None:
    view = read_response(GOOD.replace("[3]: no relevant information", ""), IMAGES, EVIDENCE)
    assert view.evidence == (
        ImageEvidence(1, "a.png", "16% inspired"),
        ImageEvidence(2, "b.png", "no relevant information"),
        ImageEvidence(3, "c.png", None),
    )
    assert render_answer(view) == (
        "Answer: 3%\n"
        "Evidence:\n"
        "  [1] a.png: 16% inspired\n"
        "  [2] b.png: no relevant information\n"
        "  [3] c.png: (nothing recorded)"
    )


def test_an_unclosed_evidence_block_records_nothing_for_any_image() -> None:
    view = read_response(GOOD.replace("</evidence>", ""), IMAGES, EVIDENCE)
    assert [item.text for item in view.evidence] == [None, None, None]
    assert view.problems == ("<evidence> is never closed",)


@pytest.mark.parametrize(
    ("text", "tags", "shown"),
    [
        ("it is red", ("think", "answer"), "Answer: it is red  (no <answer> block: this is the whole response"),
        ("<think>t</think><answer></answer>", ("think", "answer"), "Answer: (empty)"),
    ],
)
def test_rendering_says_when_there_is_no_answer_block_or_an_empty_answer(
    text: str, tags: tuple[str, ...], shown: str
) -> None:
    rendered = render_answer(read_response(text, IMAGES, tags))
    assert rendered.startswith(shown) and "Evidence" not in rendered


def test_the_warning_names_every_problem_and_none_for_a_clean_response() -> None:
    assert format_warning(read_response(GOOD, IMAGES, EVIDENCE)) is None
    warning = format_warning(read_response("just 3%", IMAGES, EVIDENCE))
    assert warning is not None and warning.startswith("warning: the response does not follow the format (no <observe>")
    assert "no <answer> block" in warning and "--raw" in warning


def test_the_json_fields() -> None:
    fields = answer_fields(read_response(GOOD, IMAGES[:2], EVIDENCE))
    assert json.loads(json.dumps(fields)) == {
        "format_ok": False,
        "answer": "3%",
        "answer_tagged": True,
        "evidence": [
            {"index": 1, "image": "a.png", "text": "16% inspired"},
            {"index": 2, "image": "b.png", "text": "no relevant information"},
        ],
        "problems": ["evidence for [3], but 2 image(s) were given"],
        "raw": GOOD,
    }
