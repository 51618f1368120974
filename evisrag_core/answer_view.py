"""What `evisrag answer` shows a person: the answer, the evidence recorded for each image, and what is wrong with the
format, read from one generated text: pure functions of the text, the image names and the method's blocks

- **answer**: what the evaluation would score (evisrag_core.parsing.extract_answer: the first `<answer>` block, the
  rest of the text when it is never closed, the whole text when there is none), stripped.
- **evidence**: per image, in the order given, its `[i]: …` item of the closed `<evidence>` block
  (evisrag_core.grounding.evidence_items), or None when the response records nothing for it. Only the methods whose
  text asks for evidence (evisrag_core.prompt_methods) have this part.
- **format problems**, in words: a block the method asks for that is missing, unclosed or repeated, blocks out of
  order, an image without evidence, evidence for an image that was not given, and (evidence methods) text outside the
  blocks. No problem means the blocks are where the method asks for them; for the evidence format that is the format
  reward's rule (spec §4) up to whitespace before the first block or after the last.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evisrag_core.errors import InputNotFoundError, UserError
from evisrag_core.grounding import evidence_items
from evisrag_core.parsing import close_tag, extract_answer, open_tag


@dataclass(frozen=True)
class ImageEvidence:
    index: int  # 1-based, as the response cites it: [index]
    image: str
    text: str | None  # None: the response records nothing for this image


@dataclass(frozen=True)
class AnswerView:
    answer: str
    answer_tagged: bool  # False: no <answer> block, the whole text is the answer the evaluation scores
    evidence: tuple[ImageEvidence, ...]  # empty for a method that asks for no evidence
    problems: tuple[str, ...]
    raw: str

    @property
    def format_ok(self) -> bool:
        return not self.problems


def _block_problems(text: str, tags: Sequence[str]) -> list[str]:
    problems = []
    for tag in tags:
        opened, closed = text.count(open_tag(tag)), text.count(close_tag(tag))
        if opened == 0:
            problems.append(f"no {open_tag(tag)} block")
        elif closed == 0:
            problems.append(f"{open_tag(tag)} is never closed")
        elif opened != closed:
            problems.append(f"{open_tag(tag)} appears {opened}×, {close_tag(tag)} {closed}×")
        elif opened > 1:
            problems.append(f"the {open_tag(tag)} block appears {opened} times")
    starts = [text.find(open_tag(tag)) for tag in tags if text.count(open_tag(tag)) == 1]
    if starts != sorted(starts):
        problems.append(f"blocks out of order: expected {', '.join(tags)}")
    return problems


def _outside_text(text: str, tags: Sequence[str]) -> list[str]:
    """Non-whitespace text before the first block, between blocks or after the last (the evidence format's rule)."""
    pattern = r"\s*".join(rf"{re.escape(open_tag(t))}.*?{re.escape(close_tag(t))}" for t in tags)
    return [] if re.fullmatch(rf"\s*{pattern}\s*", text, flags=re.DOTALL) else ["text outside the blocks"]


def _evidence(text: str, images: Sequence[str]) -> tuple[tuple[ImageEvidence, ...], list[str]]:
    items = evidence_items(text)
    evidence = tuple(ImageEvidence(i, image, items.get(i)) for i, image in enumerate(images, start=1))
    problems = [f"no evidence recorded for image [{e.index}]" for e in evidence if e.text is None]
    extra = sorted(i for i in items if not 1 <= i <= len(images))
    if extra:
        cited = ", ".join(f"[{i}]" for i in extra)
        problems.append(f"evidence for {cited}, but {len(images)} image(s) were given")
    return evidence, problems


def read_response(text: str, images: Sequence[str], tags: Sequence[str]) -> AnswerView:
    """The view of `text`, generated over `images` (names in rank order) by a method that asks for `tags`."""
    problems = _block_problems(text, tags)
    evidence: tuple[ImageEvidence, ...] = ()
    if "evidence" in tags:
        if not problems:
            problems += _outside_text(text, tags)
        if text.count(open_tag("evidence")) and text.count(close_tag("evidence")):
            evidence, missing = _evidence(text, images)
            problems += missing
        else:
            evidence = tuple(ImageEvidence(i, image, None) for i, image in enumerate(images, start=1))
    return AnswerView(extract_answer(text).strip(), open_tag("answer") in text, evidence, tuple(problems), text)


def render_answer(view: AnswerView) -> str:
    """The view for a terminal: the answer, then one line per image with its evidence."""
    lines = [f"Answer: {view.answer}" if view.answer else "Answer: (empty)"]
    if not view.answer_tagged:
        lines[0] += "  (no <answer> block: this is the whole response, as the evaluation scores it)"
    if view.evidence:
        lines.append("Evidence:")
        for item in view.evidence:
            text = "(nothing recorded)" if item.text is None else item.text
            lines.append(f"  [{item.index}] {item.image}: {text}")
    return "\n".join(lines)


def format_warning(view: AnswerView) -> str | None:
    """One warning line when the format is broken, None when it is not."""
    if view.format_ok:
        return None
    return f"warning: the response does not follow the format ({'; '.join(view.problems)}); see it with --raw"


def answer_fields(view: AnswerView) -> dict[str, Any]:
    """The view as JSON-ready fields (`--json`)."""
    fields = asdict(view)
    fields["evidence"] = [asdict(item) for item in view.evidence]
    fields["problems"] = list(view.problems)
    return {"format_ok": view.format_ok, **fields}


def check_answer_inputs(images: Sequence[str], max_images: int, max_new_tokens: int | None) -> None:
    """`evisrag answer`'s inputs, checked before a model loads: local image files that exist, no more than the model
    takes, a positive token budget. A UserError says which and what to do."""
    urls = [p for p in images if "://" in p]
    if urls:
        raise UserError(f"--images takes local files, not URLs ({', '.join(urls)}); download them and pass the paths")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise InputNotFoundError(f"image(s) not found: {', '.join(missing)}")
    if len(images) > max_images:
        raise UserError(f"{len(images)} images given; the model takes at most {max_images}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: give a positive number of tokens")
