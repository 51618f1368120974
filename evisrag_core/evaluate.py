"""Evaluation stage edge: join prediction files to test splits by qid, score them, write metrics (spec §3).

```
<data_dir>/test/<B>/top3_test.jsonl   # the gold answers (evisrag_core.data.schema)
<preds_dir>/<B>.jsonl                 # one row per question: at least `qid` and `pred` (the raw generation)
```
The reference script silently scores whatever predictions exist; here every test question must have exactly one
prediction, because a partly finished prediction run would otherwise report a mean over a different question set.
`allow_missing=True` scores missing questions as empty predictions (0) and reports how many there were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evisrag_core.bad_records import BadRecords, read_records
from evisrag_core.config import OnBadRecord
from evisrag_core.data.schema import TestRecord, list_benchmarks, load_test_split
from evisrag_core.errors import InputNotFoundError
from evisrag_core.grounding import QuestionGrounding, aggregate_grounding, question_grounding
from evisrag_core.io import BadRecordError, write_json_atomic, write_jsonl_atomic
from evisrag_core.metrics import QuestionScore, aggregate, score_prediction
from evisrag_core.parsing import extract_answer

logger = logging.getLogger(__name__)

MISSING_SHOWN = 10
OVERALL = "overall"


def check_prediction(row: dict[str, Any], where: str) -> dict[str, Any]:
    """`row`, once checked: a prediction row needs a str/int `qid` and a str `pred`; `where` locates the row in error
    messages."""
    for key in ("qid", "pred"):
        if key not in row:
            raise BadRecordError(f"{where}: missing field {key!r}; a prediction row needs 'qid' and 'pred'")
    qid, pred = row["qid"], row["pred"]
    if isinstance(qid, bool) or not isinstance(qid, str | int):
        raise BadRecordError(f"{where}: field 'qid' must be a string or an integer, got {qid!r}")
    if not isinstance(pred, str):
        raise BadRecordError(f"{where}: field 'pred' must be the generated text (a string), got {pred!r}")
    return row


def read_predictions(path: str | os.PathLike[str], bad: BadRecords | None = None) -> list[dict[str, Any]]:
    """Read a prediction JSON-lines file, checking every row's `qid` and `pred` (errors name file:line); a bad row
    is left out and counted in `bad` under the `skip` policy."""
    return read_records(path, check_prediction, bad)


def _index_predictions(
    preds: Sequence[dict[str, Any]], known: set[str], source: str, bad: BadRecords
) -> dict[str, str]:
    """Map qid (as a string: files disagree on int vs str qids) to prediction text, rejecting unknown/duplicate qids
    (under the `skip` policy they are left out and counted; the first prediction of a qid is kept)."""
    by_qid: dict[str, str] = {}
    for number, row in enumerate(preds, start=1):
        try:
            check_prediction(row, f"{source}: prediction #{number}")
            key = str(row["qid"])
            if key not in known:
                raise BadRecordError(
                    f"{source}: prediction #{number} has qid {row['qid']!r}, which is not in the test split; "
                    "check that the prediction file belongs to this benchmark"
                )
            if key in by_qid:
                raise BadRecordError(
                    f"{source}: qid {row['qid']!r} is predicted more than once (again at prediction #{number}); "
                    "keep one prediction per question"
                )
        except BadRecordError as err:
            bad.reject(err)
            continue
        by_qid[key] = row["pred"]
    return by_qid


def _missing_error(missing: list[str | int], total: int, source: str) -> BadRecordError:
    shown = ", ".join(repr(q) for q in missing[:MISSING_SHOWN])
    more = f" (and {len(missing) - MISSING_SHOWN} more)" if len(missing) > MISSING_SHOWN else ""
    return BadRecordError(
        f"{source}: {len(missing)} of {total} test questions have no prediction: {shown}{more}; "
        "finish the prediction run, or score them as empty answers (allow_missing=True, `--allow-missing`, "
        "or evaluate.on_bad_record: skip)"
    )


def _question_row(record: TestRecord, pred: str, score: QuestionScore) -> dict[str, Any]:
    """Per-question output; `answer` holds the record's own golds even when insufficient golds were used.

    The evidence-grounding fields (evisrag_core.grounding) follow the scores; `positives` is None when the test set
    does not mark the images that hold the answer, and then the citation scores are None too.
    """
    grounding = question_grounding(pred, record.positives, record.is_sufficient)
    return {
        "qid": record.qid,
        "query": record.query,
        "answer": record.answer,
        "is_sufficient": record.is_sufficient,
        "extracted_answer": extract_answer(pred),
        "pred": pred,
        "em": score.em,
        "acc": score.acc,
        "f1": score.f1,
        "cited": list(grounding.cited),
        "positives": None if grounding.positives is None else list(grounding.positives),
        "insufficient_answer": grounding.insufficient_answer,
        "evidence_precision": grounding.precision,
        "evidence_recall": grounding.recall,
        "evidence_f1": grounding.f1,
    }


def _grounding_of(row: dict[str, Any]) -> QuestionGrounding:
    positives = row["positives"]
    return QuestionGrounding(
        cited=tuple(row["cited"]),
        positives=None if positives is None else tuple(positives),
        is_sufficient=row["is_sufficient"],
        insufficient_answer=row["insufficient_answer"],
        precision=row["evidence_precision"],
        recall=row["evidence_recall"],
        f1=row["evidence_f1"],
    )


def _metrics_of(rows: list[dict[str, Any]], missing: int | None, skipped: int | None = None) -> dict[str, Any]:
    """Aggregate per-question rows: the spec §3 metrics, then the grounding metrics beside them.

    `cnt_missing_pred` is added only when missing predictions were allowed, `cnt_skipped_records` (bad test or
    prediction rows left out) only under `on_bad_record: skip`.
    """
    scores = [(QuestionScore(row["em"], row["acc"], row["f1"]), row["is_sufficient"]) for row in rows]
    metrics: dict[str, Any] = aggregate(scores)
    metrics.update(aggregate_grounding(_grounding_of(row) for row in rows))
    if missing is not None:
        metrics["cnt_missing_pred"] = missing
    if skipped is not None:
        metrics["cnt_skipped_records"] = skipped
    return metrics


def evaluate_split(
    records: list[TestRecord],
    preds: list[dict[str, Any]],
    *,
    allow_missing: bool = False,
    source: str = "predictions",
    bad: BadRecords | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one benchmark: (aggregate metrics, per-question rows in test-split order).

    `source` (e.g. the prediction file's path) is put in every error message. With `bad` under the `skip` policy,
    unknown or repeated predictions are left out, questions without a prediction score 0 (as with
    `allow_missing`), and the metrics carry `cnt_skipped_records` (all of `bad`'s skips, e.g. of the test file too).
    """
    bad = bad or BadRecords()
    skipping = bad.policy == "skip"
    by_qid = _index_predictions(preds, {str(r.qid) for r in records}, source, bad)
    missing = [r.qid for r in records if str(r.qid) not in by_qid]
    if missing and not (allow_missing or skipping):
        raise _missing_error(missing, len(records), source)
    rows = []
    for record in records:
        pred = by_qid.get(str(record.qid), "")
        rows.append(_question_row(record, pred, score_prediction(pred, record.answer, record.is_sufficient)))
    counted_missing = len(missing) if (allow_missing or skipping) else None
    return _metrics_of(rows, counted_missing, bad.count if skipping else None), rows


def _benchmarks_to_score(data_dir: Path, preds_dir: Path, benchmarks: Sequence[str] | None) -> list[str]:
    """Named benchmarks must all have predictions; by default, every benchmark that has a prediction file."""
    if benchmarks is not None:
        absent = [b for b in benchmarks if not (preds_dir / f"{b}.jsonl").is_file()]
        if absent:
            raise InputNotFoundError(f"no prediction file in {preds_dir} for: {', '.join(absent)}; run predict first")
        return list(benchmarks)
    available = list_benchmarks(data_dir)
    chosen = [b for b in available if (preds_dir / f"{b}.jsonl").is_file()]
    if not chosen:
        raise InputNotFoundError(f"none of the benchmarks {available} has a prediction file <B>.jsonl in {preds_dir}")
    skipped = sorted(set(available) - set(chosen))
    if skipped:
        logger.warning("skipping %d benchmark(s) without predictions in %s: %s", len(skipped), preds_dir, skipped)
    return chosen


def evaluate_dir(
    data_dir: str | os.PathLike[str],
    preds_dir: str | os.PathLike[str],
    benchmarks: Sequence[str] | None = None,
    *,
    allow_missing: bool = False,
    on_bad_record: OnBadRecord = "error",
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Score `<preds_dir>/<B>.jsonl` against `<data_dir>/test/<B>`; metrics per benchmark plus "overall".

    "overall" pools all questions of the scored benchmarks (a mean over questions, not over benchmarks).
    `on_bad_record: skip` leaves bad test/prediction rows out and counts them (see `evaluate_split`).
    """
    data_root, preds_root = Path(data_dir), Path(preds_dir)
    metrics: dict[str, dict[str, Any]] = {}
    per_question: dict[str, list[dict[str, Any]]] = {}
    names = _benchmarks_to_score(data_root, preds_root, benchmarks)
    if OVERALL in names:
        raise ValueError(f"a benchmark may not be called {OVERALL!r}: that key holds the pooled metrics; rename it")
    for name in names:
        pred_path = preds_root / f"{name}.jsonl"
        bad = BadRecords(on_bad_record)
        records = load_test_split(data_root / "test" / name, bad)
        metrics[name], per_question[name] = evaluate_split(
            records, read_predictions(pred_path, bad), allow_missing=allow_missing, source=str(pred_path), bad=bad
        )
    all_rows = [row for rows in per_question.values() for row in rows]
    skipping = on_bad_record == "skip"
    missing = sum(m["cnt_missing_pred"] for m in metrics.values()) if (allow_missing or skipping) else None
    skipped = sum(m["cnt_skipped_records"] for m in metrics.values()) if skipping else None
    metrics[OVERALL] = _metrics_of(all_rows, missing, skipped)
    return metrics, per_question


def write_evaluation(
    metrics: dict[str, Any],
    per_question: dict[str, list[dict[str, Any]]],
    metrics_path: str | os.PathLike[str],
    per_question_path: str | os.PathLike[str],
) -> None:
    """Write metrics.json and one JSONL of per-question rows, each tagged with its `benchmark`, both atomically."""
    rows = [{"benchmark": name, **row} for name, rows in per_question.items() for row in rows]
    write_jsonl_atomic(per_question_path, rows)
    write_json_atomic(metrics_path, metrics)
