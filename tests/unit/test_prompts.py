"""The evidence prompt (spec §1): the model card text exactly, the repository variant, and the chat message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evisrag_core.prompts import PROMPT_TEMPLATES, build_messages, content_parts, evidence_prompt, user_turn

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CARD = REPO_ROOT.parent / "shared" / "seed" / "evisrag_model_card.txt"

CARD_SENTENCE = (
    "If you find no evidence or little evidence, and insufficient to help you answer the question, follow the "
    "instructions above for insufficient information."
)
REPO_SENTENCE = (
    "If you find no evidence or few evidences, and insufficient to help you answer the question, follow the "
    "instruction above for insufficient information."
)


def model_card_prompt_body() -> str:
    """The text inside `return f\"\"\"...\"\"\"` of `evidence_promot_grpo` on the model card."""
    if not MODEL_CARD.is_file():
        pytest.skip(f"model card {MODEL_CARD} is absent (it lives in ../shared/seed beside the checkout)")
    text = MODEL_CARD.read_text(encoding="utf-8")
    match = re.search(r'def evidence_promot_grpo\(query\):\s*return f"""(.*?)"""', text, flags=re.DOTALL)
    assert match, f'{MODEL_CARD} no longer holds `def evidence_promot_grpo(query): return f"""..."""`'
    return match.group(1)


def test_model_card_template_is_the_card_text_character_for_character() -> None:
    body = model_card_prompt_body()
    assert PROMPT_TEMPLATES["model_card"] == body
    assert evidence_prompt("What colour is it?") == body.replace("{query}", "What colour is it?")


def test_repository_template_differs_only_in_the_sentence_and_blank_lines() -> None:
    card, repository = PROMPT_TEMPLATES["model_card"], PROMPT_TEMPLATES["repository"]
    assert card != repository
    assert CARD_SENTENCE in card and REPO_SENTENCE not in card
    assert REPO_SENTENCE in repository and CARD_SENTENCE not in repository
    assert "\n\n" not in card
    # Seven blocks (intro, four steps, formatting requirements, question) separated by one blank line each.
    assert repository.count("\n\n") == 6 and "\n\n\n" not in repository
    assert repository.replace("\n\n", "\n").replace(REPO_SENTENCE, CARD_SENTENCE) == card


def test_templates_hold_the_four_tags_and_one_query_slot() -> None:
    for name, template in PROMPT_TEMPLATES.items():
        assert template.count("{query}") == 1, name
        assert template.endswith("Question: {query}\n"), name
        for tag in ("observe", "evidence", "think", "answer"):
            assert f"<{tag}></{tag}>" in template, (name, tag)
        assert "<answer>insufficient to answer</answer>" in template, name


@pytest.mark.parametrize("template", sorted(PROMPT_TEMPLATES))
@pytest.mark.parametrize(
    "query",
    [
        "What colour is the square on the red background?",
        "Braces stay as typed: {0} {query} {}",
        "Ünïcode — 中文 ✓",
        "two\nlines",
        "",
    ],
)
def test_query_is_substituted_verbatim(template: str, query: str) -> None:
    head = PROMPT_TEMPLATES[template].removesuffix("{query}\n")
    assert evidence_prompt(query, template) == f"{head}{query}\n"


def test_default_template_is_the_model_card() -> None:
    assert evidence_prompt("q") == evidence_prompt("q", "model_card")
    assert evidence_prompt("q") != evidence_prompt("q", "repository")


@pytest.mark.parametrize("name", ["paper", "Model_Card", ""])
def test_unknown_template_lists_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown prompt template .*\['model_card', 'repository'\]"):
        evidence_prompt("q", name)
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_messages("q", ["a.png"], name)


@pytest.mark.parametrize(
    ("images", "pixels"),
    [
        (["a.png"], (None, None)),
        (["p1.png", "p2.png", "p3.png"], (None, None)),
        (["p1.png", "p2.png", "p3.png"], (3136, 12544)),
        ([f"/abs/page{i}.jpg" for i in range(5)], (3136, None)),
        ([], (None, None)),
    ],
)
def test_build_messages_is_one_user_turn_text_then_images_in_order(
    images: list[str], pixels: tuple[int | None, int | None]
) -> None:
    min_pixels, max_pixels = pixels
    messages = build_messages("Which?", images, "repository", min_pixels, max_pixels)
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert content[0] == {"type": "text", "text": evidence_prompt("Which?", "repository")}
    assert [entry["image"] for entry in content[1:]] == images
    for entry in content[1:]:
        assert entry["type"] == "image"
        expected_keys = {"type", "image"}
        expected_keys |= {"min_pixels"} if min_pixels is not None else set()
        expected_keys |= {"max_pixels"} if max_pixels is not None else set()
        assert set(entry) == expected_keys
        assert entry.get("min_pixels") == min_pixels and entry.get("max_pixels") == max_pixels


def _shape(parts: list[dict]) -> list[str]:
    """Content parts as short strings: the text itself, or `#<image>` for an image part."""
    return [part["text"] if part["type"] == "text" else f"#{part['image']}" for part in parts]


@pytest.mark.parametrize(
    ("text", "images", "expected"),
    [
        # markers first, last, interleaved, absent (spec §8: image i where marker i stands)
        ("<image><image>Which page?", ["a", "b"], ["#a", "#b", "Which page?"]),
        ("Which page?<image><image>", ["a", "b"], ["Which page?", "#a", "#b"]),
        (
            "Page one: <image> page two: <image> which?",
            ["a", "b"],
            ["Page one: ", "#a", " page two: ", "#b", " which?"],
        ),
        ("<image>between<image>", ["a", "b"], ["#a", "between", "#b"]),
        ("Which page?", ["a", "b"], ["Which page?", "#a", "#b"]),  # no markers: images after the text
        ("Which page?", [], ["Which page?"]),
        ("<image>", ["a"], ["#a"]),  # empty text between markers makes no part, as EasyR1 splits a prompt
        ("Step 1\n<image>\n<image>\nQuestion: q\n", ["a", "b"], ["Step 1\n", "#a", "\n", "#b", "\nQuestion: q\n"]),
    ],
)
def test_content_parts_put_each_image_at_its_marker(text: str, images: list[str], expected: list[str]) -> None:
    parts = content_parts(text, images)
    assert _shape(parts) == expected
    # the text is kept verbatim: the parts' texts are the text without its markers
    assert "".join(p["text"] for p in parts if p["type"] == "text") == text.replace("<image>", "")


@pytest.mark.parametrize(("text", "count"), [("<image>q", 2), ("<image><image><image>q", 2), ("q<image>", 0)])
def test_content_parts_refuse_markers_that_do_not_match_the_images(text: str, count: int) -> None:
    with pytest.raises(ValueError, match=r"marker\(s\) in the text for"):
        content_parts(text, [f"{i}.png" for i in range(count)])


def test_user_turn_is_verbatim_and_carries_the_pixel_bounds() -> None:
    text = evidence_prompt("Which?") + "<image><image>"
    turn = user_turn(text, ["a.png", "b.png"], 3136, 12544)
    assert turn["role"] == "user"
    assert turn["content"][0] == {"type": "text", "text": evidence_prompt("Which?")}  # instructions once, untouched
    assert turn["content"][1:] == [
        {"type": "image", "image": name, "min_pixels": 3136, "max_pixels": 12544} for name in ("a.png", "b.png")
    ]


def test_a_bare_question_gets_the_template_and_refuses_markers() -> None:
    """build_messages is the bare-question path: the evidence prompt around the question, then the images."""
    assert build_messages("Which?", ["a.png"]) == [user_turn(evidence_prompt("Which?"), ["a.png"])]
    with pytest.raises(ValueError, match="a bare question holds no <image> marker"):
        build_messages("<image>Which?", ["a.png"])
