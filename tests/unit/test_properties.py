"""Property tests (hypothesis): parsing, metrics and rewards never crash on arbitrary text, tag-shaped text included;
every metric stays in [0, 1] and every reward component in the range rsgrpo/rewards.py documents. The JSON-lines
reader under `on_bad_record: skip` never crashes on arbitrary bytes either."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from evisrag_core.bad_records import BadRecords
from evisrag_core.io import jsonl_rows
from evisrag_core.metrics import QuestionScore, aggregate, normalize_answer, score_prediction
from evisrag_core.parsing import extract_answer, extract_block
from evisrag_core.rsgrpo.rewards import (
    REWARD_COMPONENTS,
    accuracy_reward,
    evidence_reward,
    format_reward,
    is_observe_reward,
    is_think_reward,
    overlong_reward,
    score,
)

FAST = settings(max_examples=200, deadline=None)
TAGS = ("observe", "evidence", "think", "answer")
FRAGMENTS = st.sampled_from(
    [f"<{t}>" for t in TAGS]
    + [f"</{t}>" for t in TAGS]
    + [f"[{i}]:" for i in range(1, 8)]
    + [f"[{i}]" for i in range(1, 8)]
    + ["no relevant information", "insufficient to answer", " ", "\n", "red", "The", "a", ".", "<", ">", "/"]
)
# Arbitrary unicode, and text assembled from tags, citations and words so that the tag-handling paths are reached.
TEXT = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=40).map("".join))
GOLDS = st.lists(TEXT, max_size=4)


@FAST
@given(TEXT)
def test_parsing_returns_parts_of_the_text(text: str) -> None:
    answer = extract_answer(text)
    assert answer in text
    if "<answer>" not in text:
        assert answer == text
    for tag in TAGS:
        block = extract_block(text, tag)
        assert block is None or block in text


@FAST
@given(TEXT, GOLDS, st.booleans())
def test_question_metrics_are_in_unit_range(text: str, golds: list[str], is_sufficient: bool) -> None:
    result = score_prediction(text, golds, is_sufficient)
    for value in (result.em, result.acc, result.f1):
        assert 0.0 <= value <= 1.0
    assert result.em <= result.acc  # an exact match contains every gold token
    assert result.f1 >= result.em - 1e-6
    assert isinstance(normalize_answer(text), str)


@FAST
@given(st.lists(st.tuples(TEXT, GOLDS, st.booleans()), max_size=8))
def test_aggregate_metrics_are_in_unit_range(questions: list[tuple[str, list[str], bool]]) -> None:
    rows: list[tuple[QuestionScore, bool]] = [(score_prediction(t, g, s), s) for t, g, s in questions]
    metrics = aggregate(rows)
    for key, value in metrics.items():
        if key.startswith("cnt_"):
            continue
        assert 0.0 <= value <= 1.0, key
    assert metrics["cnt_global"] == metrics["cnt_issuff"] + metrics["cnt_unsuff"] == len(questions)


@FAST
@given(TEXT, TEXT, st.integers(min_value=0, max_value=5000))
def test_reward_components_stay_in_their_documented_ranges(response: str, truth: str, length: int) -> None:
    accuracy, evidence = accuracy_reward(response, truth), evidence_reward(response, truth)
    assert 0.0 <= accuracy <= 1.0
    # [0, 1], except the reference's undivided sum (up to 18) when the ground truth lists images [1]..[6]
    assert 0.0 <= evidence <= (1.0 if "[6]:" not in truth else 18.0)
    assert format_reward(response) in (0.0, 1.0)
    assert -1.0 <= overlong_reward(length) <= 0.0
    assert is_observe_reward(response) in (-1.0, 0.0)
    assert is_think_reward(response) in (-1.0, 0.0)


@FAST
@given(TEXT, TEXT, st.integers(min_value=0, max_value=5000))
def test_overall_reward_is_the_weighted_sum_within_minus_3_and_7(response: str, truth: str, length: int) -> None:
    rewards = score(response, truth, length)
    assert set(rewards) == {"overall", *REWARD_COMPONENTS}
    assert abs(rewards["overall"] - sum(rewards[name] for name in REWARD_COMPONENTS)) < 1e-9
    if "[6]:" not in truth:
        assert -3.0 <= rewards["overall"] <= 7.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_jsonl_reader_skips_any_bad_bytes_without_crashing(tmp_path_factory, lines: list[bytes]) -> None:
    path = Path(tmp_path_factory.mktemp("jsonl")) / "rows.jsonl"
    path.write_bytes(b"\n".join(lines))
    bad = BadRecords("skip")
    rows = list(jsonl_rows(path, bad))
    nonblank = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    assert len(rows) + bad.count == len(nonblank)
    assert all(isinstance(row, dict) for _, row in rows)
