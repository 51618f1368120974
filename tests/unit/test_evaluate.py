"""Tests of the evaluation edge: joining prediction files to test splits, its errors, and the written outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from evisrag_core.data import schema
from evisrag_core.data.schema import load_test_split
from evisrag_core.evaluate import evaluate_dir, evaluate_split, read_predictions, write_evaluation
from evisrag_core.io import BadRecordError, read_jsonl


def question(qid: str | int, answer: list[str], is_sufficient: bool = True) -> dict[str, Any]:
    return {
        "qid": qid,
        "query": f"question {qid}?",
        "image": ["images/1.png"],
        "answer": answer,
        "is_sufficient": is_sufficient,
    }


def write_preds(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def answer(text: str) -> str:
    return f"<observe>o</observe><evidence>[1]: e</evidence><think>t</think><answer>{text}</answer>"


@pytest.fixture
def records(make_test_split) -> list[schema.TestRecord]:
    split = make_test_split(
        "ChartQA",
        [question("q1", ["Paris"]), question("q2", ["42"]), question("q3", [], is_sufficient=False)],
    )
    return load_test_split(split)


def test_evaluate_split_scores_and_rows(records: list[schema.TestRecord]) -> None:
    preds = [
        {"qid": "q3", "pred": answer("insufficient to answer")},
        {"qid": "q1", "pred": answer("It is in Paris, France")},
        {"qid": "q2", "pred": answer("41")},
    ]
    metrics, rows = evaluate_split(records, preds)
    assert metrics["cnt_global"] == 3 and metrics["cnt_issuff"] == 2 and metrics["cnt_unsuff"] == 1
    assert metrics["global_acc"] == pytest.approx(2 / 3)
    assert metrics["issuff_f1"] == pytest.approx((1 / 3) / 2, abs=1e-6)
    assert metrics["unsuff_em"] == 1.0
    assert "cnt_missing_pred" not in metrics
    assert [row["qid"] for row in rows] == ["q1", "q2", "q3"]  # test-split order, not prediction order
    assert rows[0] == {
        "qid": "q1",
        "query": "question q1?",
        "answer": ["Paris"],
        "is_sufficient": True,
        "extracted_answer": "It is in Paris, France",
        "pred": preds[1]["pred"],
        "em": 0.0,
        "acc": 1.0,
        "f1": pytest.approx(1 / 3, abs=1e-6),
        "cited": [1],
        "positives": None,  # the split does not mark positive images: no citation scores
        "insufficient_answer": False,
        "evidence_precision": None,
        "evidence_recall": None,
        "evidence_f1": None,
    }


@pytest.mark.parametrize(("test_qids", "pred_qids"), [(["0", "1"], [0, 1]), ([0, 1], ["0", "1"])])
def test_reference_prediction_file_with_other_qid_type_and_extra_fields(
    make_test_split, tmp_path: Path, test_qids: list, pred_qids: list
) -> None:
    split = make_test_split("DocVQA", [question(test_qids[0], ["blue"]), question(test_qids[1], ["7"])])
    # the reference predict.py writes {"qid", "imgs", "pred"}
    path = write_preds(
        tmp_path / "preds" / "DocVQA.jsonl",
        [
            {"qid": pred_qids[0], "imgs": ["./data/EVisRAG-Test-DocVQA/a.png"], "pred": answer("Blue.")},
            {"qid": pred_qids[1], "imgs": ["./data/EVisRAG-Test-DocVQA/b.png"], "pred": answer("seven")},
        ],
    )
    metrics, rows = evaluate_split(load_test_split(split), read_predictions(path))
    assert metrics["global_em"] == 0.5
    assert [row["qid"] for row in rows] == test_qids


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"pred": "x"}, "missing field 'qid'"),
        ({"qid": "q1"}, "missing field 'pred'"),
        ({"qid": "q1", "pred": None}, "field 'pred'"),
        ({"qid": True, "pred": "x"}, "field 'qid'"),
        ({"qid": ["q1"], "pred": "x"}, "field 'qid'"),
    ],
)
def test_read_predictions_names_file_and_line(tmp_path: Path, line: dict[str, Any], message: str) -> None:
    path = tmp_path / "ChartQA.jsonl"
    path.write_text(json.dumps({"qid": "q0", "pred": "ok"}) + "\n\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(BadRecordError, match=rf"ChartQA\.jsonl:3: {message}"):
        read_predictions(path)


def test_unknown_qid_is_an_error_naming_it(records: list[schema.TestRecord]) -> None:
    preds = [{"qid": q, "pred": "x"} for q in ("q1", "q2", "q3", "q99")]
    with pytest.raises(BadRecordError, match="'q99'"):
        evaluate_split(records, preds)


@pytest.mark.parametrize("second", ["q1", 1])  # 1 repeats the qid "1": qids are compared as strings
def test_duplicate_qid_is_an_error(make_test_split, second: str | int) -> None:
    records = load_test_split(make_test_split("X", [question("1", ["a"]), question("q1", ["b"])]))
    preds = [{"qid": "q1", "pred": "b"}, {"qid": "1", "pred": "a"}, {"qid": second, "pred": "again"}]
    with pytest.raises(BadRecordError, match=f"qid {second!r} is predicted more than once"):
        evaluate_split(records, preds)


def test_missing_predictions_error_lists_ten_and_counts(make_test_split) -> None:
    records = load_test_split(make_test_split("X", [question(f"q{i:02d}", ["a"]) for i in range(15)]))
    preds = [{"qid": "q00", "pred": "a"}, {"qid": "q01", "pred": "a"}, {"qid": "q02", "pred": "a"}]
    with pytest.raises(BadRecordError) as caught:
        evaluate_split(records, preds, source="preds/X.jsonl")
    message = str(caught.value)
    assert "preds/X.jsonl: 12 of 15 test questions have no prediction" in message
    assert "'q03'" in message and "'q12'" in message and "'q13'" not in message
    assert "(and 2 more)" in message


def test_allow_missing_scores_missing_as_empty(records: list[schema.TestRecord]) -> None:
    preds = [{"qid": "q1", "pred": answer("Paris")}]
    metrics, rows = evaluate_split(records, preds, allow_missing=True)
    assert metrics["cnt_missing_pred"] == 2
    assert metrics["cnt_global"] == 3
    assert metrics["global_em"] == pytest.approx(1 / 3)
    assert metrics["unsuff_em"] == 0.0
    assert [(row["qid"], row["pred"], row["f1"]) for row in rows[1:]] == [("q2", "", 0.0), ("q3", "", 0.0)]


@pytest.fixture
def two_benchmarks(make_test_split, tmp_path: Path) -> tuple[Path, Path]:
    """ChartQA (1 question, right) and DocVQA (3 questions, 1 right) have predictions; SlideVQA has none."""
    make_test_split("ChartQA", [question("c1", ["5"])])
    make_test_split("DocVQA", [question("d1", ["w"]), question("d2", ["x"]), question("d3", ["y"])])
    make_test_split("SlideVQA", [question("s1", ["z"])])
    preds = tmp_path / "preds"
    write_preds(preds / "ChartQA.jsonl", [{"qid": "c1", "pred": answer("5")}])
    write_preds(preds / "DocVQA.jsonl", [{"qid": q, "pred": answer("x")} for q in ("d1", "d2", "d3")])
    return tmp_path / "data", preds


def test_evaluate_dir_scores_benchmarks_with_predictions_and_pools_overall(
    two_benchmarks: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="evisrag_core.evaluate"):
        metrics, per_question = evaluate_dir(*two_benchmarks)
    assert "skipping 1 benchmark(s)" in caplog.text and "SlideVQA" in caplog.text
    assert list(metrics) == ["ChartQA", "DocVQA", "overall"]
    assert list(per_question) == ["ChartQA", "DocVQA"]
    assert metrics["ChartQA"]["global_em"] == 1.0
    assert metrics["DocVQA"]["global_em"] == pytest.approx(1 / 3)
    assert metrics["overall"]["cnt_global"] == 4
    assert metrics["overall"]["global_em"] == 0.5  # pooled over questions, not the mean of 1.0 and 1/3


def test_evaluate_dir_named_benchmarks(two_benchmarks: tuple[Path, Path]) -> None:
    metrics, _ = evaluate_dir(*two_benchmarks, benchmarks=["DocVQA"])
    assert list(metrics) == ["DocVQA", "overall"]
    assert metrics["overall"] == metrics["DocVQA"]
    with pytest.raises(FileNotFoundError, match="SlideVQA"):
        evaluate_dir(*two_benchmarks, benchmarks=["DocVQA", "SlideVQA"])


def test_evaluate_dir_without_any_prediction_file(make_test_split, tmp_path: Path) -> None:
    make_test_split("ChartQA", [question("c1", ["5"])])
    with pytest.raises(FileNotFoundError, match="prediction file"):
        evaluate_dir(tmp_path / "data", tmp_path / "empty")


def test_evaluate_dir_allow_missing_sums_missing(two_benchmarks: tuple[Path, Path]) -> None:
    data_dir, preds = two_benchmarks
    write_preds(preds / "DocVQA.jsonl", [{"qid": "d2", "pred": answer("x")}])
    with pytest.raises(BadRecordError, match="2 of 3"):
        evaluate_dir(data_dir, preds)
    metrics, _ = evaluate_dir(data_dir, preds, allow_missing=True)
    assert metrics["DocVQA"]["cnt_missing_pred"] == 2
    assert metrics["overall"]["cnt_missing_pred"] == 2
    assert metrics["overall"]["global_em"] == 0.5


def test_write_evaluation_round_trips(two_benchmarks: tuple[Path, Path], tmp_path: Path) -> None:
    metrics, per_question = evaluate_dir(*two_benchmarks)
    out = tmp_path / "eval"
    write_evaluation(metrics, per_question, out / "metrics.json", out / "per_question.jsonl")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == metrics
    rows = read_jsonl(out / "per_question.jsonl")
    assert [(row["benchmark"], row["qid"]) for row in rows] == [
        ("ChartQA", "c1"),
        ("DocVQA", "d1"),
        ("DocVQA", "d2"),
        ("DocVQA", "d3"),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_question.jsonl"]  # no temp files left
