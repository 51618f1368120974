"""The run report: one HTML page summarising a pipeline run, for a person reading it after the fact.

```
<out_dir>/index.html        metrics table, training curves, example predictions (good and bad) with their images
<out_dir>/sft_loss.png      SFT loss per step            (from sft.log_file, when the SFT stage logged one)
<out_dir>/rsgrpo_rewards.png RS-GRPO reward per component (from rsgrpo.log_file, when RS-GRPO ran)
```

Inputs are files other stages wrote; any of them may be missing (a run that skipped SFT, an evaluation of a
released checkpoint), and then its section says what is missing and which stage writes it instead of failing.
Images are embedded as base64 thumbnails, so `index.html` is self-contained (and a single MLflow artifact page).
The page holds no timestamp: the same inputs give the same report.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from evisrag_core.data.schema import TestRecord, load_test_split, resolve_image_path
from evisrag_core.grounding import GROUNDING_KEYS, evidence_items
from evisrag_core.images import thumbnail_data_url
from evisrag_core.io import BadRecordError, atomic_path, read_jsonl, write_text_atomic
from evisrag_core.metrics import METRIC_KEYS

logger = logging.getLogger(__name__)

INDEX = "index.html"
SFT_PLOT = "sft_loss.png"
RSGRPO_PLOT = "rsgrpo_rewards.png"
OVERALL = "overall"
REWARD_PREFIX = "reward/"
THUMBNAIL = (224, 224)
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 90%; }
td, th { border: 1px solid #ccc; padding: 0.15em 0.5em; text-align: right; }
th { vertical-align: bottom; max-width: 6.5em; }  /* long metric names wrap at their underscores (<wbr>) */
th:first-child, td:first-child { text-align: left; }
.example { border: 1px solid #bbb; border-radius: 6px; padding: 0.8em; margin-bottom: 1.2em; }
.good { border-left: 6px solid #4caf50; } .bad { border-left: 6px solid #e53935; }
figure.image { display: inline-block; margin: 0 0.6em 0.4em 0; text-align: center; font-size: 85%; }
figure.image img { border: 3px solid #ddd; } figure.positive img { border-color: #4caf50; }
pre { white-space: pre-wrap; word-break: break-word; background: #fafafa; padding: 0.4em; margin: 0.2em 0; }
.missing { color: #a15c00; }
"""


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from; each file may be absent."""

    metrics_file: Path
    per_question_file: Path
    data_dir: Path
    sft_log: Path
    rsgrpo_log: Path


# --- reading the inputs ---------------------------------------------------------------------------------------------


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """Rows (`{"step": …, <metric>: …}`) of a step log: a JSON array (the DVC plots files the stages publish) or
    JSON lines (`.jsonl`, e.g. a stage's history in work/); [] when the file does not exist."""
    if not path.is_file():
        return []
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise BadRecordError(f"{path}: expected a JSON array of objects (a step log)")
    return rows


def curve(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, skipping rows without a finite value for it."""
    points = [
        (float(r["step"]), float(r[key]))
        for r in rows
        if "step" in r and isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return [s for s, _ in points], [v for _, v in points]


def reward_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The `reward/<component>` columns of an RS-GRPO step log, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update({k: None for k in row if k.startswith(REWARD_PREFIX)})
    return list(keys)


def pick_examples(rows: Sequence[dict[str, Any]], count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Up to `count` good (EM 1, best evidence F1 first) and `count` bad (EM 0, lowest F1 first) per-question rows.

    Taken round-robin over benchmarks so that every benchmark shows up; ties keep the file order (deterministic).
    """

    def grounding(row: dict[str, Any]) -> float:
        return row.get("evidence_f1") if row.get("evidence_f1") is not None else 0.0

    good = sorted((r for r in rows if r.get("em") == 1.0), key=lambda r: -grounding(r))
    bad = sorted((r for r in rows if r.get("em") != 1.0), key=lambda r: (r.get("f1", 0.0), grounding(r)))
    return _round_robin(good, count), _round_robin(bad, count)


def _round_robin(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    queues: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        queues.setdefault(str(row.get("benchmark", "")), []).append(row)
    picked: list[dict[str, Any]] = []
    while len(picked) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


# --- plots ----------------------------------------------------------------------------------------------------------


def plot_sft_loss(rows: Sequence[dict[str, Any]], out: Path) -> bool:
    """Write the SFT loss curve; False (nothing written) when the log has no loss values."""
    steps, loss = curve(rows, "loss")
    if not steps:
        return False
    figure = Figure(figsize=(6, 3.2), dpi=100)
    axes = figure.subplots()
    axes.plot(steps, loss, marker="." if len(steps) < 30 else None)
    axes.set(xlabel="step", ylabel="training loss", title="SFT loss")
    axes.grid(alpha=0.3)
    _save(figure, out)
    return True


def plot_rsgrpo_rewards(rows: Sequence[dict[str, Any]], out: Path) -> bool:
    """Write the RS-GRPO rewards: `overall` (range -3…7) on the left, each component (about -1…1) on the right."""
    keys = reward_keys(rows)
    if not keys:
        return False
    overall = f"{REWARD_PREFIX}overall"
    figure = Figure(figsize=(11, 3.4), dpi=100)
    left, right = figure.subplots(1, 2)
    for axes, chosen in ((left, [k for k in keys if k == overall]), (right, [k for k in keys if k != overall])):
        for key in chosen:
            steps, values = curve(rows, key)
            axes.plot(steps, values, label=key.removeprefix(REWARD_PREFIX), marker="." if len(steps) < 30 else None)
        axes.set(xlabel="step", ylabel="mean reward")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    left.set_title("RS-GRPO overall reward")
    right.set_title("reward per component")
    _save(figure, out)
    return True


def _save(figure: Figure, out: Path) -> None:
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")


# --- HTML -----------------------------------------------------------------------------------------------------------


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _breakable(name: str) -> str:
    """A metric name that may wrap after each underscore: 18 columns of names like `issuff_refusal_rate` on one line
    would make the table about 1,900 px wide; wrapped, it fits 1,400 px."""
    return "_<wbr>".join(html.escape(part) for part in name.split("_"))


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Benchmarks as rows (overall last), EM/Acc/F1 then grounding keys as columns; absent values are n/a."""
    names = sorted(metrics, key=lambda name: (name == OVERALL, name))
    present = {k for row in metrics.values() for k in row}
    columns = [k for k in (*METRIC_KEYS, *GROUNDING_KEYS) if k in present]
    columns += sorted(present - set(columns))
    head = "".join(f"<th>{_breakable(c)}</th>" for c in ["benchmark", *columns])
    body = "".join(
        "<tr>" + f"<td>{html.escape(n)}</td>" + "".join(f"<td>{_cell(metrics[n].get(c))}</td>" for c in columns)
        for n in names
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _images_html(record: TestRecord | None, split_dir: Path, cited: Sequence[int]) -> str:
    if record is None:
        return _missing("test record not found: images unavailable")
    positives = set(record.positives or ())
    parts = []
    for index, relative in enumerate(record.image, start=1):
        tags = [t for t, on in (("holds the answer", index in positives), ("cited", index in cited)) if on]
        caption = f"[{index}]" + (f" {', '.join(tags)}" if tags else "")
        try:
            source = thumbnail_data_url(resolve_image_path(split_dir, relative), THUMBNAIL)
        except (BadRecordError, OSError) as err:
            parts.append(_missing(f"[{index}] {relative}: {err}"))
            continue
        kind = "image positive" if index in positives else "image"
        parts.append(
            f'<figure class="{kind}"><img src="{source}" alt="image {index}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "<div>" + "".join(parts) + "</div>"


def _evidence_html(pred: str) -> str:
    items = evidence_items(pred)
    if not items:
        return _missing("no closed <evidence> block")
    rows = "".join(f"<li>[{i}]: {html.escape(text)}</li>" for i, text in sorted(items.items()))
    return f"<ul>{rows}</ul>"


def render_example(row: dict[str, Any], record: TestRecord | None, split_dir: Path, kind: str) -> str:
    gold = ", ".join(row.get("answer") or []) if row.get("is_sufficient") else "insufficient (no image answers it)"
    scores = (
        f"EM {_cell(row.get('em'))} · F1 {_cell(row.get('f1'))} · evidence P/R/F1 "
        f"{_cell(row.get('evidence_precision'))} / {_cell(row.get('evidence_recall'))} / "
        f"{_cell(row.get('evidence_f1'))}"
    )
    return (
        f'<div class="example {kind}">'
        f"<p><b>{html.escape(str(row.get('benchmark', '')))}</b> · qid {html.escape(str(row.get('qid')))}"
        f" · {html.escape(scores)}</p>"
        f"<p><b>Question:</b> {html.escape(str(row.get('query', '')))}<br><b>Gold:</b> {html.escape(gold)}<br>"
        f"<b>Answer:</b> {html.escape(str(row.get('extracted_answer', '')))}</p>"
        f"{_images_html(record, split_dir, row.get('cited') or [])}"
        f"<b>Evidence</b>{_evidence_html(str(row.get('pred', '')))}"
        f"<details><summary>full generation</summary><pre>{html.escape(str(row.get('pred', '')))}</pre></details>"
        "</div>"
    )


class _Records:
    """Test records by (benchmark, qid), loaded once per benchmark; a missing split gives None, not an error."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cache: dict[str, dict[str, TestRecord]] = {}

    def split_dir(self, benchmark: str) -> Path:
        return self.data_dir / "test" / benchmark

    def get(self, benchmark: str, qid: Any) -> TestRecord | None:
        if benchmark not in self.cache:
            try:
                self.cache[benchmark] = {str(r.qid): r for r in load_test_split(self.split_dir(benchmark))}
            except (FileNotFoundError, BadRecordError) as err:
                logger.warning("report: no test records for %s (%s)", benchmark, err)
                self.cache[benchmark] = {}
        return self.cache[benchmark].get(str(qid))


def _examples_section(inputs: ReportInputs, count: int) -> str:
    if not inputs.per_question_file.is_file():
        return _missing(f"{inputs.per_question_file} not found: run the evaluate stage to see example predictions.")
    good, bad = pick_examples(read_jsonl(inputs.per_question_file), count)
    records = _Records(inputs.data_dir)
    parts = []
    for title, kind, rows in (("Good (exact match)", "good", good), ("Bad (no exact match)", "bad", bad)):
        parts.append(f"<h3>{title}</h3>")
        if not rows:
            parts.append(_missing("none in this run"))
        for row in rows:
            bench = str(row.get("benchmark", ""))
            parts.append(render_example(row, records.get(bench, row.get("qid")), records.split_dir(bench), kind))
    return "".join(parts)


def _metrics_section(metrics_file: Path) -> str:
    if not metrics_file.is_file():
        return _missing(f"{metrics_file} not found: run the evaluate stage.")
    return metrics_table(json.loads(metrics_file.read_text(encoding="utf-8")))


def _plot_section(log: Path, out: Path, plot: Any, stage: str) -> str:
    rows = read_step_log(log)
    if not rows:
        return _missing(f"{log} not found or empty: the {stage} stage did not run (or logged no steps).")
    if not plot(rows, out):
        return _missing(f"{log} has no plottable columns.")
    return f'<img src="{out.name}" alt="{html.escape(stage)} curve">'


def build_report(inputs: ReportInputs, out_dir: str | os.PathLike[str], examples: int = 3) -> Path:
    """Write `<out_dir>/index.html` (and the curve PNGs it shows); returns the index path.

    Stale PNGs from an earlier report are removed first, so a curve whose log disappeared is not shown.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (SFT_PLOT, RSGRPO_PLOT):
        (out / name).unlink(missing_ok=True)
    sections = [
        ("Metrics", _metrics_section(inputs.metrics_file)),
        ("SFT loss", _plot_section(inputs.sft_log, out / SFT_PLOT, plot_sft_loss, "sft")),
        ("RS-GRPO rewards", _plot_section(inputs.rsgrpo_log, out / RSGRPO_PLOT, plot_rsgrpo_rewards, "rsgrpo")),
        ("Example predictions", _examples_section(inputs, examples)),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>EVisRAG run report</title>'
        f"<style>{_STYLE}</style></head><body><h1>EVisRAG run report</h1>"
        "<p>Metrics: EM/Acc/F1 (spec §3) and evidence grounding (evisrag_core/grounding.py). Image borders: green "
        "= holds the answer; captions say which images the model cited.</p>"
        f"{body}</body></html>\n"
    )
    index = out / INDEX
    write_text_atomic(index, page)
    return index
