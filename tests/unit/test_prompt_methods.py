"""The prediction methods: each text is the reference's, byte for byte, and each builds the message it should.

The hashes are sha256 of the UTF-8 string each reference function returns with the query "{query}", read from
OpenBMB/VisRAG at commit f35d232 (src/evisrag/prompt.py, whose own sha256 is 6f625c9f…0fd2e): `baseline(query,
"concat")` is its concat text, `baseline(query, <anything else>)` the multi-image one. Recompute with
`git show f35d232:src/evisrag/prompt.py` and a call of each function; do not derive them from our own texts.
"""

from __future__ import annotations

import hashlib
from typing import Any, get_args

import pytest
from PIL import Image

from evisrag_core.config.base import PredictMethod
from evisrag_core.metrics import score_prediction
from evisrag_core.prompt_methods import (
    METHODS,
    QUERY,
    concat_horizontally,
    get_method,
    method_messages,
    method_prompt,
)
from evisrag_core.prompts import build_messages

REFERENCE_SHA256 = {  # (method, prompt_template) → sha256 of the reference function's text
    (
        "evidence",
        "repository",
    ): "7fbff7c282445e17398e0fda9a23c26e5cb7cf445a17f5ebd55e1e8a03452cd9",  # evidence_promot_grpo
    ("evidence_oneshot", "model_card"): "fde4c872777d1aaf58222e12cfce3590300d0d5bcd72465f156d1f6051fa1774",
    ("baseline", "model_card"): "5631d593bf70a3cda9e94c5480ae0a65a0b7fe1d407b5154dd31cc260855a069",
    ("baseline_concat", "model_card"): "afd4bc608bdb9d9fa904a2ed50677c2a2c608496b536c6dd83be793ae682efd0",
    ("cocot", "model_card"): "63354ab271012ea25023324bae53b4b273d33f0248add29c68e2172db5e7b932",
    ("ccot", "model_card"): "5a87054effd92596b1824a70117b3825e9bb4c9abd48b9191f4be1141f77f25d",
    ("ddcot", "model_card"): "58891327b902050647204560b3f8047c9c7a7e6898d2c040f16e1e9576e52ff8",
}
REFERENCE_LENGTH = {"evidence_oneshot": 5289, "baseline": 496, "baseline_concat": 484, "cocot": 761, "ccot": 974}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(("method", "template"), sorted(REFERENCE_SHA256))
def test_each_text_is_the_reference_text_byte_for_byte(method: str, template: str) -> None:
    text = method_prompt(method, QUERY, template)
    assert sha256(text) == REFERENCE_SHA256[method, template]
    if method in REFERENCE_LENGTH:
        assert len(text) == REFERENCE_LENGTH[method]


@pytest.mark.parametrize("method", [m for m in METHODS if m != "evidence"])
def test_a_baseline_text_does_not_depend_on_the_evidence_wording(method: str) -> None:
    assert method_prompt(method, "q", "model_card") == method_prompt(method, "q", "repository")


def test_the_method_names_are_the_config_choices() -> None:
    assert list(METHODS) == list(get_args(PredictMethod))


@pytest.mark.parametrize(
    ("method", "reference_name", "tags"),
    [
        ("evidence", "evidence_prompt_grpo", ("observe", "evidence", "think", "answer")),
        ("evidence_oneshot", "evidence_prompt_notrain", ("observe", "evidence", "think", "answer")),
        ("baseline", "baseline", ("think", "answer")),
        ("baseline_concat", "baseline (concat)", ("think", "answer")),
        ("cocot", "COCOT", ("think", "answer")),
        ("ccot", "CCOT", ("think", "answer")),
        ("ddcot", "DDCOT", ("answer",)),
    ],
)
def test_each_method_names_its_reference_and_the_blocks_its_text_asks_for(
    method: str, reference_name: str, tags: tuple[str, ...]
) -> None:
    spec = get_method(method)
    assert (spec.reference_name, spec.tags) == (reference_name, tags)
    text = method_prompt(method, "q")
    assert all(f"<{tag}>" in text for tag in tags)


@pytest.mark.parametrize("query", ["What is {x}?", "a {query} b", "line\nbreak", ""])
def test_the_query_goes_in_once_verbatim_like_the_reference_f_string(query: str) -> None:
    for method in METHODS:
        template = method_prompt(method, QUERY)
        head, _, tail = template.partition(QUERY)
        assert method_prompt(method, query) == head + query + tail


def test_an_unknown_method_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of evidence, evidence_oneshot, baseline"):
        method_prompt("COT", "q")


def _images(tmp_path: Any, sizes: list[tuple[int, int]]) -> list[str]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, (40 * (i + 1), 0, 0)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize(
    ("method", "n_images", "joined"),
    [
        ("evidence", 3, False),
        ("evidence_oneshot", 3, False),
        ("baseline", 3, False),
        ("baseline_concat", 1, True),
        ("cocot", 3, False),
        ("ccot", 3, False),
        ("ddcot", 3, False),
    ],
)
def test_messages_per_method(tmp_path: Any, method: str, n_images: int, joined: bool) -> None:
    paths = _images(tmp_path, [(56, 56), (84, 56), (56, 112)])
    messages = method_messages(method, "Which colour?", paths, "model_card", 3136, 12544)
    assert [m["role"] for m in messages] == ["user"]
    text, *images = messages[0]["content"]
    assert text == {"type": "text", "text": method_prompt(method, "Which colour?", "model_card")}
    assert len(images) == n_images
    assert all(e["type"] == "image" and (e["min_pixels"], e["max_pixels"]) == (3136, 12544) for e in images)
    if joined:
        assert isinstance(images[0]["image"], Image.Image) and images[0]["image"].size == (56 * 2 + 84 * 2 + 56, 112)
    else:
        assert [e["image"] for e in images] == paths  # rank order, paths for the backend to open


@pytest.mark.parametrize("template", ["model_card", "repository"])
def test_the_evidence_method_is_exactly_the_default_prompt_builder(tmp_path: Any, template: str) -> None:
    paths = _images(tmp_path, [(56, 56), (56, 56)])
    expected = build_messages("q", paths, template, 3136, 12544)
    assert method_messages("evidence", "q", paths, template, 3136, 12544) == expected


@pytest.mark.parametrize(
    ("sizes", "joined"),
    [
        ([(10, 10)], (10, 10)),
        ([(100, 50), (30, 100)], (230, 100)),  # the first scaled ×2
        ([(10, 3), (5, 7)], (28, 7)),  # 10 × 7/3 = 23.33…: truncated to 23, as int() does
        ([(20, 20), (20, 20), (20, 20)], (60, 20)),
    ],
)
def test_concatenation_scales_to_the_tallest_and_joins_left_to_right(
    sizes: list[tuple[int, int]], joined: tuple[int, int]
) -> None:
    images = [Image.new("RGB", size, (255, 255 * (i % 2), 0)) for i, size in enumerate(sizes)]
    out = concat_horizontally(images)
    assert (out.mode, out.size) == ("RGB", joined)


def test_concatenation_keeps_the_rank_order() -> None:
    red, green = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (2, 8), (0, 255, 0))
    out = concat_horizontally([red, green])  # red scaled to 8×8, then green as it is
    assert out.size == (10, 8)
    assert [out.getpixel((x, 4)) for x in (0, 7, 8, 9)] == [(255, 0, 0), (255, 0, 0), (0, 255, 0), (0, 255, 0)]


def test_concatenating_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no images"):
        concat_horizontally([])


@pytest.mark.parametrize(
    ("response", "golds", "is_sufficient", "em", "acc"),
    [
        # a baseline that follows its text (think, then answer): scored on the answer block only
        ("<think>The bar for 2019 reads 11%.</think>\n<answer>11%</answer>", ["11"], True, 1.0, 1.0),
        # DDCoT's sub-questions before the answer do not count either
        ("Sub-questions:\n1. which year?\nSub-answers:\n1. 2019\n<answer>Paris</answer>", ["Paris"], True, 1.0, 1.0),
        # no <answer> at all: the whole text is the answer, as the reference's eval.py reads it
        ("It is Paris, France", ["Paris"], True, 0.0, 1.0),
        ("<think>nothing here</think><answer>insufficient to answer</answer>", ["Paris"], False, 1.0, 1.0),
    ],
)
def test_a_baselines_output_is_scored_like_any_other(
    response: str, golds: list[str], is_sufficient: bool, em: float, acc: float
) -> None:
    score = score_prediction(response, golds, is_sufficient)
    assert (score.em, score.acc) == (em, acc)
