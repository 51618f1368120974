"""Rewards of spec §4: a table of responses with hand-computed component values, plus property tests."""

from __future__ import annotations

import math

import pytest
from _pytest.mark import ParameterSet
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from evisrag_core.metrics import normalize_answer
from evisrag_core.rsgrpo.rewards import (
    REWARD_COMPONENTS,
    REWARD_FUNCTIONS,
    RewardInput,
    overlong_reward,
    score,
)

NRI = "no relevant information"
LONG_GOLD = "The chart shows revenue of 11% in 2019"  # 8 words: scored by set-F1
GT = f"<evidence>[1]: {NRI} [2]: {LONG_GOLD}</evidence>\n<answer>11%</answer>"
GOOD_EVIDENCE = f"[1]: {NRI} [2]: {LONG_GOLD}"
OK_LENGTH = 300


def response(
    observe: str = "I look at each image in turn.",
    evidence: str = GOOD_EVIDENCE,
    think: str = "The second image gives 11% for 2019.",
    answer: str = "11%",
    sep: str = "\n",
) -> str:
    return (
        f"<observe>{observe}</observe>{sep}<evidence>{evidence}</evidence>{sep}"
        f"<think>{think}</think>{sep}<answer>{answer}</answer>"
    )


def ground_truth(evidence: str, answer: str = "11%") -> str:
    return f"<evidence>{evidence}</evidence>\n<answer>{answer}</answer>"


GOOD = response()
FIVE = "[1]: no relevant information [2]: red [3]: blue [4]: no relevant information [5]: green"
SIX = FIVE + " [6]: no relevant information"  # weights 1, 3, 3, 1, 3, 1: Σw = 12
ALL_ZERO = {"accuracy": 0.0, "evidence": 0.0, "format": 0.0, "is_observe": 0.0, "is_think": 0.0}
PERFECT = {"accuracy": 3.0, "evidence": 3.0, "format": 1.0, "overlong": 0.0, "is_observe": 0.0, "is_think": 0.0}


def case(name: str, text: str, gt: str = GT, length: int = OK_LENGTH, **expected: float) -> ParameterSet:
    """One row: the weighted components expected by hand from spec §4 (components not named are not checked)."""
    return pytest.param(text, gt, length, expected, id=name)


CASES = [
    case("perfect", GOOD, overall=7.0, **PERFECT),
    case("empty response", "", overall=0.0, overlong=0.0, **ALL_ZERO),
    case("empty response, zero length", "", length=0, overall=-1.0, overlong=-1.0),
    case("empty ground truth never raises", GOOD, gt="", overall=1.0, accuracy=0.0, evidence=0.0, format=1.0),
    case("ground truth without answer block", GOOD, gt=f"<evidence>{GOOD_EVIDENCE}</evidence>", accuracy=0.0),
    case("missing </answer>", GOOD.removesuffix("</answer>"), accuracy=0.0, format=0.0, is_think=0.0),
    case("missing <answer>", GOOD.replace("<answer>", ""), accuracy=0.0, format=0.0),
    case("answer normalised: case and punctuation", response(answer="11."), accuracy=3.0),
    case("answer set-F1 2/3", response(answer="revenue 11"), accuracy=2.0),
    case("answer set not multiset", response(answer="11 11 11"), accuracy=3.0),
    case("answer articles only", response(answer="the"), gt=ground_truth(GOOD_EVIDENCE, "the"), accuracy=0.0),
    case("answer unicode match", response(answer="Zürich"), gt=ground_truth(GOOD_EVIDENCE, "zürich"), accuracy=3.0),
    case(
        "answer unicode punctuation kept",
        response(answer="Zürich。"),
        gt=ground_truth(GOOD_EVIDENCE, "zürich"),
        accuracy=0.0,
    ),
    case("duplicated <answer>: block cut at the second", "<answer>11%<answer>wrong</answer>", accuracy=3.0),
    case("text before <observe>", "Sure! " + GOOD, overall=6.0, format=0.0),
    case("newline before <observe>", "\n" + GOOD, format=0.0, accuracy=3.0),
    case("text after </answer>", GOOD + " Done.", format=0.0, accuracy=3.0),
    case("newline after </answer>", GOOD + "\n", format=0.0),
    case("no whitespace between blocks", response(sep=""), format=1.0),
    case("mixed whitespace between blocks", response(sep=" \n\t\n "), format=1.0),
    case("text between blocks", response(sep="\nso\n"), format=0.0),
    case(
        "blocks out of order",
        f"<observe>o</observe><think>t</think><evidence>{GOOD_EVIDENCE}</evidence><answer>11</answer>",
        format=0.0,
        evidence=3.0,
        accuracy=3.0,
    ),
    case("observe block missing", GOOD.replace("<observe>", "").replace("</observe>", ""), format=0.0),
    case("duplicated tag inside think", response(think="first <answer> then"), format=0.0),
    case("duplicated closing tag", GOOD.replace("</think>", "</think></think>"), format=0.0),
    case("evidence: missing </evidence>", GOOD.replace("</evidence>", ""), evidence=0.0, format=0.0),
    case("evidence: only the weight-1 item right", response(evidence=f"[1]: {NRI}"), evidence=3.0 * 1 / 4),
    case(
        "evidence: only the weight-3 item right",
        response(evidence=f"[1]: something [2]: {LONG_GOLD}"),
        evidence=3.0 * 3 / 4,
    ),
    case(
        "evidence: long gold by set-F1 0.6",
        response(evidence=f"[1]: {NRI} [2]: chart shows revenue"),
        evidence=3.0 * (1 + 3 * 0.6) / 4,
    ),
    case(
        "evidence: short gold as substring",
        response(evidence="[1]: It is Paris, France"),
        gt=ground_truth("[1]: Paris"),
        evidence=3.0,
    ),
    case(
        "evidence: substring is not word-bounded",
        response(evidence="[1]: Parisian"),
        gt=ground_truth("[1]: Paris"),
        evidence=3.0,
    ),
    case("evidence: short gold absent", response(evidence="[1]: London"), gt=ground_truth("[1]: Paris"), evidence=0.0),
    case(
        "evidence: 'No relevant information.' weighs 3",
        response(evidence="[1]: nothing [2]: blue"),
        gt=ground_truth("[1]: No relevant information. [2]: blue"),
        evidence=3.0 * 3 / 6,
    ),
    case(
        "evidence: gold without [1]: scores 0",
        response(evidence="[2]: blue"),
        gt=ground_truth("[2]: blue"),
        evidence=0.0,
    ),
    case(
        "evidence: repeated [1]: only the first is read",
        response(evidence="[1]: red [1]: blue"),
        gt=ground_truth("[1]: blue"),
        evidence=0.0,
    ),
    case(
        "evidence: 5-word gold by set-F1",
        response(evidence="[1]: bar tall"),
        gt=ground_truth("[1]: the bar is very tall"),
        evidence=3.0 * 2 / 3,
    ),
    case(
        "evidence: 4-word gold by substring",
        response(evidence="[1]: bar tall"),
        gt=ground_truth("[1]: the bar is tall"),
        evidence=0.0,
    ),
    case(
        "evidence: gold that normalises to nothing matches anything",
        response(evidence="[1]: red"),
        gt=ground_truth("[1]: the"),
        evidence=3.0,
    ),
    case("evidence: five images, divided", response(evidence=FIVE), gt=ground_truth(FIVE), evidence=3.0),
    case("evidence: six images, not divided", response(evidence=SIX), gt=ground_truth(SIX), evidence=3.0 * 12),
    case(
        "evidence: 7th image ignored (right)",
        response(evidence=SIX + " [7]: pink"),
        gt=ground_truth(SIX + " [7]: pink"),
        evidence=3.0 * 12,
    ),
    case(
        "evidence: 7th image ignored (wrong)",
        response(evidence=SIX + " [7]: gold"),
        gt=ground_truth(SIX + " [7]: pink"),
        evidence=3.0 * 12,
    ),
    case("overlong: 199 tokens", GOOD, length=199, overlong=-1.0, overall=6.0),
    case("overlong: 200 tokens", GOOD, length=200, overlong=0.0),
    case("overlong: 1024 tokens", GOOD, length=1024, overlong=0.0),
    case("overlong: 1025 tokens", GOOD, length=1025, overlong=-1 / 512),
    case("overlong: 1280 tokens", GOOD, length=1280, overlong=-0.5, overall=6.5),
    case("overlong: 1536 tokens", GOOD, length=1536, overlong=-1.0),
    case("overlong: 1537 tokens", GOOD, length=1537, overlong=-1.0),
    case("is_observe: cites [1]", response(observe="Image [1] is a chart."), is_observe=-1.0, overall=6.0),
    case("is_observe: cites [5]", response(observe="See [5]."), is_observe=-1.0),
    case("is_observe: cites [6] only", response(observe="See [6]."), is_observe=0.0),
    case("is_observe: needs both observe tags", "<observe>Image [1] is a chart.", is_observe=0.0),
    case("is_think: identical think and answer", response(think="11%", answer="11%"), is_think=-1.0, overall=6.0),
    case("is_think: differ by whitespace only", response(think="11% ", answer="11%"), is_think=0.0),
    case("is_think: both empty", response(think="", answer=""), is_think=-1.0, accuracy=0.0),
    case("is_think: no answer close tag", "<think>11%</think><answer>11%", is_think=0.0),
    case(
        "all penalties at once",
        "\n<observe>[2]</observe>",
        length=5000,
        overall=-2.0,
        overlong=-1.0,
        is_observe=-1.0,
        format=0.0,
    ),
]


@pytest.mark.parametrize(("text", "gt", "length", "expected"), CASES)
def test_score_table(text: str, gt: str, length: int, expected: dict[str, float]) -> None:
    result = score(text, gt, length)
    assert {key: result[key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_score_keys_and_overall_is_the_weighted_sum() -> None:
    result = score(response(answer="revenue 11", observe="[3]"), GT, 1100)
    assert list(result) == ["overall", *REWARD_COMPONENTS]
    assert result["overall"] == pytest.approx(sum(result[name] for name in REWARD_COMPONENTS))
    assert result == {
        "overall": pytest.approx(2.0 + 3.0 + 1.0 - 76 / 512 - 1.0),
        "accuracy": pytest.approx(2.0),
        "evidence": 3.0,
        "format": 1.0,
        "overlong": pytest.approx(-76 / 512),
        "is_observe": -1.0,
        "is_think": 0.0,
    }


def test_registry_holds_unweighted_components_in_order() -> None:
    assert REWARD_COMPONENTS == ("accuracy", "evidence", "format", "overlong", "is_observe", "is_think")
    assert tuple(REWARD_FUNCTIONS) == REWARD_COMPONENTS
    values = {name: fn(RewardInput(GOOD, GT, OK_LENGTH)) for name, fn in REWARD_FUNCTIONS.items()}
    assert values == {
        "accuracy": 1.0,
        "evidence": 1.0,
        "format": 1.0,
        "overlong": 0.0,
        "is_observe": 0.0,
        "is_think": 0.0,
    }


def test_length_limits_are_passed_through() -> None:
    assert score(GOOD, GT, 150, min_length=100)["overlong"] == 0.0
    assert score(GOOD, GT, 100, max_length=150, buffer_length=100, min_length=10)["overlong"] == -0.5
    assert overlong_reward(60, max_length=100, buffer_length=50, min_length=10) == pytest.approx(-0.2)


# --- properties -------------------------------------------------------------------------------------------------

TAGGY = st.sampled_from(
    [
        "<observe>",
        "</observe>",
        "<evidence>",
        "</evidence>",
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "[1]:",
        "[2]:",
        "[3]:",
        "[4]:",
        "[5]:",
        "[6]:",
        "[7]:",
        "[1]",
        "[6]",
        " ",
        "\n",
        NRI,
        "the",
        "11%",
        "Paris",
        "a b c d e",
        "é",
        "\u00a0",
        "。",
    ]
)
TEXT = st.lists(st.one_of(TAGGY, st.text(max_size=6)), max_size=30).map("".join)
TAGGED_GT = st.tuples(TEXT, TEXT).map(lambda p: ground_truth(p[0], p[1]))
RANGES = {
    "accuracy": (0.0, 3.0),
    "evidence": (0.0, 3.0),
    "format": (0.0, 1.0),
    "overlong": (-1.0, 0.0),
    "is_observe": (-1.0, 0.0),
    "is_think": (-1.0, 0.0),
}


def lists_six_images(gt: str) -> bool:
    evidence = gt.split("<evidence>")[1].split("</evidence>")[0] if "<evidence>" in gt else ""
    return all(f"[{i}]:" in evidence for i in range(1, 7))


@settings(max_examples=400, deadline=None)
@given(TEXT, st.one_of(TEXT, TAGGED_GT), st.integers(-10, 3000))
def test_never_raises_and_stays_in_range(text: str, gt: str, length: int) -> None:
    result = score(text, gt, length)
    assert set(result) == {"overall", *REWARD_COMPONENTS}
    assert all(math.isfinite(v) for v in result.values())
    assert result["format"] in (0.0, 1.0) and result["is_observe"] in (-1.0, 0.0) and result["is_think"] in (-1.0, 0.0)
    assert 0.0 <= result["evidence"] <= 3.0 * 18
    assume(not lists_six_images(gt))  # with [1]..[6] the reference leaves evidence undivided (see the table)
    for name, (low, high) in RANGES.items():
        assert low <= result[name] <= high, name
    assert -3.0 <= result["overall"] <= 7.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.integers())
def test_arbitrary_unicode_never_raises(text: str, gt: str, length: int) -> None:
    assert math.isfinite(score(text, gt, length)["overall"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.text()))
def test_normalisation_is_idempotent(text: str) -> None:
    # set-F1 normalises once; the reference normalises the answer twice, which is the same only if this holds
    assert normalize_answer(normalize_answer(text)) == normalize_answer(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc xyz.,", max_size=30))
def test_accuracy_is_one_against_itself_when_nonempty(answer: str) -> None:
    gt = ground_truth(GOOD_EVIDENCE, answer)
    expected = 3.0 if normalize_answer(answer) else 0.0
    assert score(response(answer=answer), gt, OK_LENGTH)["accuracy"] == pytest.approx(expected)
