"""Evidence-grounding metric: which images a response cites vs which hold the answer, and the refusal rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from evisrag_core.data.convert import convert_test_set
from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.schema import load_test_split
from evisrag_core.evaluate import evaluate_dir, evaluate_split
from evisrag_core.grounding import (
    GROUNDING_KEYS,
    QuestionGrounding,
    aggregate_grounding,
    citation_scores,
    cited_images,
    is_insufficient_answer,
    question_grounding,
)
from evisrag_core.io import read_jsonl


def tagged(evidence: str, answer: str = "red") -> str:
    return f"<observe>o</observe>\n<evidence>{evidence}</evidence>\n<think>t</think>\n<answer>{answer}</answer>"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (tagged("[1]: red square [2]: no relevant information [3]: no relevant information"), (1,)),
        (tagged("[1]: No relevant information. [2]: blue [3]: the square is green"), (2, 3)),
        (tagged("[1]: no relevant information [2]: no relevant information"), ()),
        (tagged("[1]: [2]: blue"), (2,)),  # an empty item cites nothing
        (tagged("[2]:blue [1]: red"), (1, 2)),  # order and spacing do not matter
        (tagged("[1] : red [1]: no relevant information"), (1,)),  # a repeated index keeps its first item
        (tagged("[4]: red"), (4,)),  # an index beyond the images is still a (wrong) citation
        (tagged("image one is red"), ()),  # no [i]: markers
        ("<evidence>[1]: red", ()),  # unclosed block: a truncated generation cites nothing
        ("[1]: red <answer>red</answer>", ()),  # no evidence block at all
        ("", ()),
    ],
)
def test_cited_images(response: str, expected: tuple[int, ...]) -> None:
    assert cited_images(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (tagged("", "insufficient to answer"), True),
        (tagged("", "Insufficient to answer the question."), True),
        (tagged("", "no relevant information"), True),
        (tagged("", "insufficient information"), True),
        (tagged("", "red"), False),
        (tagged("", "the answer is insufficient"), False),  # only a leading "insufficient" refuses
        ("insufficient to answer", True),  # untagged text is the answer, as in spec §3
        ("", False),
    ],
)
def test_is_insufficient_answer(response: str, expected: bool) -> None:
    assert is_insufficient_answer(response) is expected


@pytest.mark.parametrize(
    ("cited", "positives", "expected"),
    [
        ([1], [1], (1.0, 1.0, 1.0)),
        ([1, 2], [1], (0.5, 1.0, 2 / 3)),
        ([2], [1], (0.0, 0.0, 0.0)),
        ([1], [1, 3], (1.0, 0.5, 2 / 3)),
        ([], [1], (None, 0.0, 0.0)),  # cited nothing: precision undefined, not perfect
        ([1], [], (0.0, None, 0.0)),  # cited an image on an insufficient question
        ([], [], (None, None, 1.0)),  # nothing to cite and nothing cited
    ],
)
def test_citation_scores(cited: list[int], positives: list[int], expected: tuple) -> None:
    precision, recall, f1 = citation_scores(cited, positives)
    assert (precision, recall) == expected[:2]
    assert f1 == pytest.approx(expected[2])


def test_question_grounding_without_positives_has_no_citation_scores() -> None:
    q = question_grounding(tagged("[1]: red [2]: no relevant information"), None, True)
    assert q == QuestionGrounding((1,), None, True, False, None, None, None)


def g(precision, recall, f1, *, sufficient=True, refused=False, positives=(1,)) -> QuestionGrounding:
    return QuestionGrounding((), positives, sufficient, refused, precision, recall, f1)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {"cnt_evidence": 0}),
        (
            [g(1.0, 1.0, 1.0), g(None, 0.0, 0.0, refused=True)],
            {
                "evidence_precision": 1.0,  # the undefined precision is left out of the mean
                "evidence_recall": 0.5,
                "evidence_f1": 0.5,
                "issuff_refusal_rate": 0.5,
                "cnt_evidence": 2,
            },
        ),
        (
            [g(None, None, 1.0, sufficient=False, refused=True, positives=()), g(0.0, None, 0.0, sufficient=False)],
            {"evidence_precision": 0.0, "evidence_f1": 0.5, "unsuff_answer_rate": 0.5, "cnt_evidence": 2},
        ),
        (
            [g(None, None, None, positives=None), g(None, None, None, sufficient=False, refused=True, positives=None)],
            {"issuff_refusal_rate": 0.0, "unsuff_answer_rate": 0.0, "cnt_evidence": 0},
        ),
    ],
)
def test_aggregate_grounding(rows: list[QuestionGrounding], expected: dict) -> None:
    result = aggregate_grounding(rows)
    assert result == pytest.approx(expected)
    assert set(result) <= set(GROUNDING_KEYS)


def test_evaluate_reports_grounding_beside_em_on_generated_data(tmp_path: Path) -> None:
    """Gold responses of the generator cite exactly the positives; a model citing every image halves precision."""
    spec = GeneratorSpec(seed=3, image_size=32, images_per_question=3, insufficient_fraction=0.25)
    generate_dataset(tmp_path / "data", spec, ["ColorSquare"], n_test_per_split=20, n_sft=0, n_rl=0)
    records = load_test_split(tmp_path / "data" / "test" / "ColorSquare")
    assert all(r.positives is not None and bool(r.positives) == r.is_sufficient for r in records)
    evidence = " ".join(f"[{i + 1}]: x" for i in range(3))
    answer_of = {str(r.qid): (r.answer[0] if r.is_sufficient else "insufficient to answer") for r in records}

    preds = [{"qid": qid, "pred": tagged(evidence, a)} for qid, a in answer_of.items()]
    metrics, rows = evaluate_split(records, preds)
    n_suff = sum(r.is_sufficient for r in records)
    assert 0 < n_suff < len(records) == 20  # both kinds of question, so both rates exist
    assert metrics["global_em"] == 1.0 and metrics["cnt_evidence"] == 20
    assert metrics["evidence_recall"] == 1.0
    assert metrics["evidence_precision"] == pytest.approx(sum(len(r.positives) for r in records) / 3 / 20)
    assert metrics["issuff_refusal_rate"] == 0.0 and metrics["unsuff_answer_rate"] == 0.0
    assert sum(row["evidence_recall"] is not None for row in rows) == n_suff
    assert all(row["cited"] == [1, 2, 3] for row in rows)

    preds_dir = tmp_path / "preds"
    preds_dir.mkdir()
    (preds_dir / "ColorSquare.jsonl").write_text(
        "".join(json.dumps({"qid": qid, "pred": "insufficient to answer"}) + "\n" for qid in answer_of)
    )
    metrics, _ = evaluate_dir(tmp_path / "data", preds_dir)
    for name in ("ColorSquare", "overall"):
        assert metrics[name]["issuff_refusal_rate"] == 1.0 and metrics[name]["unsuff_answer_rate"] == 0.0
        assert metrics[name]["evidence_recall"] == 0.0 and "evidence_precision" not in metrics[name]
    assert read_jsonl(tmp_path / "data" / "test" / "ColorSquare" / "top3_test.jsonl")[0]["positives"]


@pytest.mark.parametrize(
    ("extra", "is_sufficient", "expected"),
    [
        ({"posImgs": ["./VisRAG-Ret-Test-X/imgs/b.png"]}, True, [2]),
        ({"posImgs": ["imgs/a.png", "imgs/c.png"]}, True, [1, 3]),
        ({"posImgs": ["./VisRAG-Ret-Test-X/imgs/z.png"]}, False, []),  # positive page not retrieved: insufficient
        ({"posImgs": ["imgs/z.png"]}, True, None),  # answerable, yet no image matches: unknown, not a guess
        ({"posImgs": ["imgs/a.png"]}, False, None),  # contradicts is_sufficient: unknown
        ({"posImgs": ["imgs/z.png"], "positives": [3]}, True, [3]),  # explicit positives win
        ({}, True, None),
    ],
)
def test_hub_import_reads_positives_from_pos_imgs(
    tmp_path: Path, extra: dict, is_sufficient: bool, expected: list[int] | None
) -> None:
    snapshot = tmp_path / "EVisRAG-Test-X"
    (snapshot / "imgs").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(snapshot / "imgs" / f"{name}.png")
    row = {"qid": 1, "query": "q?", "answer": ["x"], "is_sufficient": is_sufficient, **extra}
    row["image"] = ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    (snapshot / "top3_test.jsonl").write_text(json.dumps(row) + "\n")
    convert_test_set(snapshot, tmp_path / "out")
    assert load_test_split(tmp_path / "out")[0].positives == expected
