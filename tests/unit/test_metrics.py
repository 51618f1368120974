"""Table-driven tests of answer extraction, normalisation and the EM/Acc/F1 rules of spec §3."""

from __future__ import annotations

import dataclasses

import pytest

from evisrag_core.metrics import INSUFFICIENT_GOLDS, QuestionScore, aggregate, normalize_answer, score_prediction
from evisrag_core.parsing import extract_answer, extract_block

PERFECT_F1 = 2 / (2 + 1e-7)  # P = R = 1 with the reference's 1e-7 term: 0.99999995, not 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<observe>o</observe><answer>Paris</answer>", "Paris"),
        ("<answer>first</answer> <answer>second</answer>", "first"),
        ("<think>t</think><answer>cut off by max tokens", "cut off by max tokens"),
        ("no tags at all", "no tags at all"),
        ("", ""),
        ("<answer></answer>", ""),
        ("<answer> spaced </answer>", " spaced "),
        ("</answer>early close<answer>Rome</answer>", "Rome"),
        ("<answer>a<answer>b</answer>", "a<answer>b"),  # spec: up to the next </answer>, not the next <answer>
        ("<Answer>X</Answer>", "<Answer>X</Answer>"),  # tags are case-sensitive
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("<evidence>[1]: a [2]: b</evidence>", "evidence", "[1]: a [2]: b"),
        ("<think>one</think><think>two</think>", "think", "one"),
        ("<think></think>", "think", ""),
        ("<think>never closed", "think", None),
        ("no open</think>", "think", None),
        ("</think>close before open<think>x", "think", None),
        ("<answer>x</answer>", "think", None),
        ("", "observe", None),
    ],
)
def test_extract_block(text: str, tag: str, expected: str | None) -> None:
    assert extract_block(text, tag) == expected


@pytest.mark.parametrize(
    "text",
    ["<", "<answer", "</answer></answer>", "<answer>" * 3, "\x00\ufffd", "🙂<answer>🙂", "<<answer>>", "\n\t \r"],
)
def test_parsing_and_scoring_never_raise_on_odd_text(text: str) -> None:
    assert isinstance(extract_answer(text), str)
    assert extract_block(text, "answer") is None or isinstance(extract_block(text, "answer"), str)
    assert isinstance(normalize_answer(text), str)
    assert isinstance(score_prediction(text, ["x"], True), QuestionScore)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PARIS", "paris"),
        ("11%", "11"),
        ("Hello, World!", "hello world"),
        ("$1,000", "1000"),
        ("U.S.A.", "usa"),
        ("it's", "its"),
        ("the-end", "theend"),  # punctuation is removed before articles, so the hyphen joins the words
        ("snake_case", "snakecase"),
        ("The Eiffel Tower", "eiffel tower"),
        ("an apple a day", "apple day"),
        ("THE END", "end"),
        ("theatre", "theatre"),  # articles are word-bounded
        ("Anna and the bandana", "anna and bandana"),
        ("(a)", ""),
        ("A", ""),
        ("  many   spaces\tand\nnewlines  ", "many spaces and newlines"),
        ("Café Über", "café über"),
        ("“quoted”", "“quoted”"),  # only ASCII punctuation is removed
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_insufficient_golds_are_the_spec_list() -> None:
    assert list(INSUFFICIENT_GOLDS) == [
        "no relevant information",
        "insufficient to answer",
        "insufficient to answer the question",
    ]


@pytest.mark.parametrize(
    ("pred", "golds", "is_sufficient", "em", "acc", "f1"),
    [
        # the three examples of spec §3, verbatim
        ("…<answer>It is in Paris, France</answer>", ["Paris"], True, 0, 1, 0.333333),
        ("<answer>11%</answer>", ["11"], True, 1, 1, 1),
        ("<answer>the</answer>", ["the"], True, 0, 0, 0),
        # zero overlap: a gold sharing no token contributes nothing, even when both sides are empty
        ("<answer></answer>", [""], True, 0, 0, 0),
        ("<answer>Paris</answer>", ["the", "a"], True, 0, 0, 0),  # empty gold set ⊆ anything, still 0
        ("<answer>Paris</answer>", ["London", "paris."], True, 1, 1, 1),
        ("<think>Paris</think>", ["Paris"], True, 0, 0, 0),  # no <answer>: the tags stay in the scored text
        # extraction feeds the score
        ("Paris", ["paris"], True, 1, 1, 1),
        ("I think Paris", ["Paris"], True, 0, 1, 0.5),
        ("<answer>London</answer><answer>Paris</answer>", ["Paris"], True, 0, 0, 0),
        ("<answer>Paris", ["Paris"], True, 1, 1, 1),
        # Acc is set inclusion of the gold's tokens, order-free
        ("<answer>France Paris</answer>", ["Paris France"], True, 0, 1, 1),
        ("<answer>yes</answer>", ["yes yes"], True, 0, 1, 0.666667),
        # F1 uses the multiset overlap: "y" counts twice (min(3, 2)), giving P = 2/4, R = 2/3
        ("<answer>x y y y</answer>", ["y y z"], True, 0, 0, 0.571429),
        # each metric is its own max over golds: Acc from "red", F1 from the longer gold
        ("<answer>red blue green</answer>", ["red", "red blue green yellow"], True, 0, 1, 0.857143),
        ("<answer>Paris France</answer>", ["Paris", "Lyon France Europe"], True, 0, 1, 0.666667),
        ("<answer>Paris</answer>", [], True, 0, 0, 0),
        # insufficient questions are scored against INSUFFICIENT_GOLDS, never their own golds
        ("<answer>insufficient to answer</answer>", ["Paris"], False, 1, 1, 1),
        ("<answer>No relevant information.</answer>", [], False, 1, 1, 1),
        ("<answer>Paris</answer>", ["Paris"], False, 0, 0, 0),
        ("<answer>The answer is insufficient</answer>", [], False, 0, 0, 0.666667),
        ("<answer>insufficient to answer</answer>", ["Paris"], True, 0, 0, 0),
    ],
)
def test_score_prediction(pred: str, golds: list[str], is_sufficient: bool, em: float, acc: float, f1: float) -> None:
    score = score_prediction(pred, golds, is_sufficient)
    assert (score.em, score.acc) == (em, acc)
    assert score.f1 == pytest.approx(f1, abs=1e-6)


def test_f1_keeps_the_reference_epsilon() -> None:
    assert score_prediction("<answer>Paris</answer>", ["Paris"], True).f1 == PERFECT_F1


def test_question_score_is_frozen() -> None:
    score = QuestionScore(em=1.0, acc=1.0, f1=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.em = 0.0  # type: ignore[misc]


AGGREGATE_KEYS = {
    "global_em",
    "global_acc",
    "global_f1",
    "issuff_em",
    "issuff_acc",
    "issuff_f1",
    "unsuff_em",
    "cnt_global",
    "cnt_issuff",
    "cnt_unsuff",
}


def test_aggregate_means_per_group() -> None:
    rows = [
        (QuestionScore(1.0, 1.0, 1.0), True),
        (QuestionScore(0.0, 1.0, 0.5), True),
        (QuestionScore(0.0, 0.0, 0.2), True),
        (QuestionScore(1.0, 1.0, 1.0), False),
        (QuestionScore(0.0, 1.0, 0.25), False),
    ]
    assert aggregate(iter(rows)) == {
        "global_em": pytest.approx(2 / 5),
        "global_acc": pytest.approx(4 / 5),
        "global_f1": pytest.approx(2.95 / 5),
        "issuff_em": pytest.approx(1 / 3),
        "issuff_acc": pytest.approx(2 / 3),
        "issuff_f1": pytest.approx(1.7 / 3),
        "unsuff_em": 0.5,
        "cnt_global": 5,
        "cnt_issuff": 3,
        "cnt_unsuff": 2,
    }


@pytest.mark.parametrize(
    ("rows", "zero_keys"),
    [
        ([], AGGREGATE_KEYS),
        ([(QuestionScore(1.0, 1.0, 1.0), True)], {"unsuff_em", "cnt_unsuff"}),
        ([(QuestionScore(1.0, 1.0, 1.0), False)], {"issuff_em", "issuff_acc", "issuff_f1", "cnt_issuff"}),
    ],
)
def test_aggregate_empty_groups_are_zero(rows: list[tuple[QuestionScore, bool]], zero_keys: set[str]) -> None:
    metrics = aggregate(rows)
    assert set(metrics) == AGGREGATE_KEYS
    assert {k for k, v in metrics.items() if v == 0} == zero_keys
    assert all(type(metrics[k]) is int for k in AGGREGATE_KEYS if k.startswith("cnt_"))
    assert all(type(metrics[k]) is float for k in AGGREGATE_KEYS if not k.startswith("cnt_"))
