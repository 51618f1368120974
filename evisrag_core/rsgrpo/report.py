"""HTML report of a few rollouts of an RS-GRPO step: what each reward component scored, and where it acts.

For each chosen response (the best and the worst of a group, group after group): the question, the images as
inline thumbnails, the tagged ground truth, and the response once per reward component with that component's token
span highlighted (the tokens its advantage reaches, spec §5), beside the component's weighted reward and the
response's group advantage for it. In plain GRPO there is one component, `overall`, over the whole response.

Pages: `<report_dir>/step-000010.html`, one per reported step, and `index.html` linking them; self-contained (the
images are base64 PNG thumbnails), written atomically.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evisrag_core.data.schema import IMAGE_PLACEHOLDER
from evisrag_core.images import thumbnail_data_url
from evisrag_core.io import write_text_atomic
from evisrag_core.rsgrpo.rollout import group_ids
from evisrag_core.rsgrpo.state import Batch

COLOURS = {
    "accuracy": "#ffd6a5",
    "evidence": "#caffbf",
    "format": "#e4e4e4",
    "overlong": "#d7d7ff",
    "is_observe": "#9bf6ff",
    "is_think": "#ffc6ff",
    "overall": "#fdffb6",
}
THUMBNAIL = (160, 160)
_PAGE = re.compile(r"^step-(\d+)\.html$")
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
.sample { border: 1px solid #bbb; border-radius: 6px; padding: 0.8em; margin-bottom: 1.5em; }
.images img { margin-right: 0.5em; border: 1px solid #ccc; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.2em 0 0.8em 0; background: #fafafa; padding: 0.4em; }
.component { font-weight: bold; padding: 0 0.3em; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.1em 0.5em; }
"""


@dataclass(frozen=True)
class ReportSample:
    """One response, ready to render: its tokens and, per component, the span mask, reward and advantage."""

    prompt_id: str
    query: str  # the question, for the heading (`shown_question`)
    images: tuple[str, ...]  # image files
    ground_truth: str
    tokens: tuple[str, ...]  # one decoded piece per response token (special tokens shown)
    components: tuple[str, ...]
    spans: tuple[tuple[bool, ...], ...]  # (n_components, L): component j's span over the tokens
    rewards: dict[str, float]  # overall and every component, weighted
    advantages: dict[str, float]  # per component


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds, by decoding growing prefixes (a byte-level token alone may not be valid UTF-8)."""
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:end]), skip_special_tokens=False)
        pieces.append(text[len(previous) :])
        previous = text
    return pieces


def _pick(batch: Batch, count: int) -> list[int]:
    """Rows of the best and the worst response (by overall) of each group, in group order, `count` at most."""
    rows, start = [], 0
    for group in batch.groups:
        overall = batch.rewards.overall[start : start + len(group.responses)]
        rows.extend(dict.fromkeys([start + int(overall.argmax()), start + int(overall.argmin())]))
        start += len(group.responses)
    return rows[:count]


def shown_question(text: str) -> str:
    """A prompt's question for a heading: what follows its last "Question:" (the evidence prompt's last line), else
    the whole text; without `<image>` markers."""
    return text.rsplit("Question:", 1)[-1].replace(IMAGE_PLACEHOLDER, "").strip()


def report_samples(batch: Batch, tokenizer: Any, count: int) -> list[ReportSample]:
    """Up to `count` responses of a step's batch, with the spans and advantages the update used."""
    owners = group_ids(batch.groups)
    reward_rows = batch.rewards.rows()
    samples = []
    for row in _pick(batch, count):
        prompt = batch.groups[owners[row]].prompt
        length = int(batch.response_mask[row].sum())
        samples.append(
            ReportSample(
                prompt_id=prompt.id,
                query=shown_question(prompt.text),
                images=prompt.images,
                ground_truth=prompt.ground_truth,
                tokens=tuple(token_pieces(tokenizer, batch.response_ids[row, :length].tolist())),
                components=batch.components,
                spans=tuple(tuple(batch.span_masks[row, j, :length].tolist()) for j in range(len(batch.components))),
                rewards=reward_rows[row],
                advantages={name: float(batch.advantages[row, j]) for j, name in enumerate(batch.components)},
            )
        )
    return samples


def highlight(tokens: Sequence[str], span: Sequence[bool], colour: str) -> str:
    """The response as HTML with the span's tokens marked; contiguous tokens share one <mark>."""
    parts, run, inside = [], [], False
    for piece, covered in zip(tokens, span, strict=True):
        if covered != inside and run:
            text = html.escape("".join(run))
            parts.append(f'<mark style="background:{colour}">{text}</mark>' if inside else text)
            run = []
        inside = covered
        run.append(piece)
    if run:
        text = html.escape("".join(run))
        parts.append(f'<mark style="background:{colour}">{text}</mark>' if inside else text)
    return "".join(parts)


def render_sample(sample: ReportSample) -> str:
    images = "".join(
        f'<img src="{thumbnail_data_url(path, THUMBNAIL)}" alt="[{i}] {html.escape(Path(path).name)}" title="[{i}]">'
        for i, path in enumerate(sample.images, start=1)
    )
    header = "".join(f"<th>{html.escape(key)}</th>" for key in sample.rewards)
    values = "".join(f"<td>{value:+.3f}</td>" for value in sample.rewards.values())
    rows = []
    for name, span in zip(sample.components, sample.spans, strict=True):
        colour = COLOURS.get(name, "#eee")
        reward = sample.rewards.get(name, 0.0)
        rows.append(
            f'<div class="span" data-component="{name}"><span class="component" style="background:{colour}">'
            f"{name}</span> reward {reward:+.3f} · advantage {sample.advantages[name]:+.3f} · "
            f"{sum(span)} of {len(span)} tokens<pre>{highlight(sample.tokens, span, colour)}</pre></div>"
        )
    return (
        f'<div class="sample"><h3>{html.escape(sample.prompt_id)}: {html.escape(sample.query)}</h3>'
        f'<div class="images">{images}</div>'
        f"<table><tr><th>reward</th>{header}</tr><tr><td>value</td>{values}</tr></table>"
        f"<details><summary>tagged ground truth</summary><pre>{html.escape(sample.ground_truth)}</pre></details>"
        f"{''.join(rows)}</div>"
    )


def render_page(step: int, samples: Sequence[ReportSample]) -> str:
    body = "".join(render_sample(sample) for sample in samples)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>RS-GRPO step {step}</title>'
        f"<style>{_STYLE}</style></head><body><h1>RS-GRPO step {step}</h1>"
        "<p>Each response is shown once per reward component; the highlighted tokens are the component's span, "
        "the tokens its advantage reaches.</p>"
        f'<p><a href="index.html">all steps</a></p>{body}</body></html>'
    )


def write_step_report(report_dir: Path, step: int, samples: Sequence[ReportSample]) -> Path:
    """Write `step-<step>.html` and refresh `index.html`; returns the step page."""
    page = report_dir / f"step-{step:06d}.html"
    write_text_atomic(page, render_page(step, samples))
    steps = sorted(int(m.group(1)) for p in report_dir.iterdir() if (m := _PAGE.match(p.name)))
    links = "".join(f'<li><a href="step-{s:06d}.html">step {s}</a></li>' for s in steps)
    index = '<!doctype html><html><head><meta charset="utf-8"><title>RS-GRPO rollouts</title></head><body>'
    write_text_atomic(report_dir / "index.html", f"{index}<h1>RS-GRPO rollouts</h1><ul>{links}</ul></body></html>")
    return page
