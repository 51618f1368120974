"""The hard embedded world (`data.embedded.world: hard`): a world where the parts of a response can be right or wrong
independently, so that an estimator comparison has room (issue 18; design and why: docs/study_estimators.md).

Each question has K images; each image is a flat background (all K different) and may hold a square of another
colour near its centre, in a **black frame** (evidence) or in a **white frame** (a decoy that only looks like
evidence). The palette has near-miss pairs (red / orange / pink, orange / yellow, green / teal, blue / purple).

- `HardSquare`:     "What colour is the square in the black frame?"           → that square's colour.
- `HardBackground`: "What colour is the background behind the square in the black frame?" → its background.
- `TwoSquares`:     "What colours are the squares in black frames?"           → "<first> and <second>", image order.

Every non-evidence image is a decoy with probability 1/2. An insufficient question holds no black-framed square and
at least one decoy, so it always looks answerable to a model that has only learnt "there is a square".

All the distinctions are colours (the frame's, the square's, the background's): the probe in the shared README found
a 1 M-parameter Qwen2.5-VL learns colours in minutes and shapes not at all. The records are written in the default
world's reference forms through the same writers (evisrag_core.data.generator), with this world's tagged responses.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from PIL import Image

from evisrag_core.data.generator import (
    NO_RELEVANT,
    ORDINALS,
    World,
    draw_framed_square,
    ground_truth_of,
    jitter,
    question_stream,
    rl_record,
    sft_record,
    tagged_blocks,
)
from evisrag_core.data.schema import (
    INSUFFICIENT_ANSWER,
)

WORLD = "hard"
# Near-miss pairs on purpose: citing the right image is a coarse distinction (a black frame), reading its value a
# fine one, so a response can cite right and answer wrong. Any two colours still differ by more than twice the ±18
# jitter in some channel, so an image stays decodable (tests/unit/test_hard_world.py reads them back).
HARD_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 40),
    "green": (40, 170, 60),
    "teal": (30, 150, 150),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "pink": (235, 120, 175),
}
NEAR_MISSES = (("red", "orange"), ("red", "pink"), ("orange", "yellow"), ("green", "teal"), ("blue", "purple"))
FRAMES: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
EVIDENCE_FRAME, DECOY_FRAME = "black", "white"
DECOY_PROBABILITY = 0.5


@dataclass(frozen=True)
class HardPanel:
    """One image: its background, and its square's colour and frame (None: a plain image)."""

    background: str
    square: str | None = None
    frame: str | None = None

    @property
    def is_evidence(self) -> bool:
        return self.frame == EVIDENCE_FRAME

    @property
    def is_decoy(self) -> bool:
        return self.frame == DECOY_FRAME


@dataclass(frozen=True)
class HardQuestion:
    qid: str
    split: str
    query: str
    panels: tuple[HardPanel, ...]
    answer: str
    positives: tuple[int, ...]  # 1-based indices of the black-framed images

    @property
    def is_sufficient(self) -> bool:
        return bool(self.positives)


@dataclass(frozen=True)
class _HardTask:
    query: str
    evidence_images: int  # how many black-framed squares a sufficient question holds
    answer: Callable[[list[HardPanel]], str]  # from the evidence panels, in image order


def _square_evidence(p: HardPanel) -> str:
    return f"the square in the black frame on the {p.background} background is {p.square}"


HARD_TASKS: dict[str, _HardTask] = {
    "HardSquare": _HardTask("What colour is the square in the black frame?", 1, lambda ps: str(ps[0].square)),
    "HardBackground": _HardTask(
        "What colour is the background behind the square in the black frame?", 1, lambda ps: ps[0].background
    ),
    "TwoSquares": _HardTask(
        "What colours are the squares in black frames?", 2, lambda ps: f"{ps[0].square} and {ps[1].square}"
    ),
}


def _evidence_text(split: str, panel: HardPanel) -> str:
    if split == "HardBackground":
        return f"the background behind the {panel.square} square in the black frame is {panel.background}"
    return _square_evidence(panel)


def _with_square(rng: random.Random, background: str, frame: str) -> HardPanel:
    square = rng.choice([c for c in HARD_COLOURS if c != background])
    return HardPanel(background, square, frame)


def make_hard_question(rng: random.Random, split: str, qid: str, k: int, insufficient: bool) -> HardQuestion:
    """One question of `split`; an insufficient one holds no black-framed square and at least one decoy."""
    task = HARD_TASKS[split]
    if not task.evidence_images <= k <= len(HARD_COLOURS):
        raise ValueError(f"{split} needs between {task.evidence_images} and {len(HARD_COLOURS)} images, got {k}")
    backgrounds = rng.sample(list(HARD_COLOURS), k)
    evidence = set() if insufficient else set(rng.sample(range(k), task.evidence_images))
    decoys = {i for i in range(k) if i not in evidence and rng.random() < DECOY_PROBABILITY}
    if insufficient and not decoys:
        decoys = {rng.randrange(k)}  # it must look answerable
    panels = []
    for i, background in enumerate(backgrounds):
        if i in evidence:
            panels.append(_with_square(rng, background, EVIDENCE_FRAME))
        elif i in decoys:
            panels.append(_with_square(rng, background, DECOY_FRAME))
        else:
            panels.append(HardPanel(background))
    positives = tuple(sorted(i + 1 for i in evidence))
    answer = task.answer([panels[i - 1] for i in positives]) if positives else INSUFFICIENT_ANSWER
    return HardQuestion(qid, split, task.query, tuple(panels), answer, positives)


def render_hard_panel(panel: HardPanel, size: int, rng: random.Random) -> Image.Image:
    """A flat background, with the panel's square (if any) in its black or white frame; the default world's
    geometry and jitter (generator.draw_framed_square)."""
    image = Image.new("RGB", (size, size), jitter(HARD_COLOURS[panel.background], rng))
    if panel.square is None or panel.frame is None:
        return image
    return draw_framed_square(image, rng, HARD_COLOURS[panel.square], FRAMES[panel.frame])


def _observation(index: int, panel: HardPanel) -> str:
    # Terse on purpose: three of these per response, and every token is a decoding step of every rollout.
    name = ORDINALS[index].capitalize()
    if panel.square is None:
        return f"{name} image: no square, {panel.background} background, irrelevant."
    verdict = "relevant" if panel.is_evidence else "irrelevant"
    return f"{name} image: {panel.square} square, {panel.frame} frame, {panel.background} background, {verdict}."


def hard_tagged_response(question: HardQuestion) -> str:
    """The full target response (spec §1 format) for a hard-world question."""
    observations = " ".join(_observation(i, p) for i, p in enumerate(question.panels))
    evidence = " ".join(
        f"[{i + 1}]: {_evidence_text(question.split, p) if (i + 1) in question.positives else NO_RELEVANT}"
        for i, p in enumerate(question.panels)
    )
    if question.is_sufficient:
        cited = " and ".join(f"[{i}]" for i in question.positives)
        holds = "Images {} hold black frames" if len(question.positives) > 1 else "Image {} holds the black frame"
        think = f"{holds.format(cited)}, so the answer is {question.answer}."
    else:
        think = "No image shows a square in a black frame, so the images are insufficient to answer."
    return tagged_blocks(observations, evidence, think, question.answer)


def hard_ground_truth(question: HardQuestion) -> str:
    return ground_truth_of(hard_tagged_response(question), question.answer)


# Its own stream names (`hard-…`): a hard split never shares a question stream with the default world's.
_hard_questions = partial(question_stream, make_hard_question, "hard-")


def _sft_row(question: HardQuestion, images: list[str]) -> dict[str, Any]:
    return sft_record(question, images, response=hard_tagged_response(question))


def _rl_row(question: HardQuestion, images: list[str]) -> dict[str, Any]:
    return rl_record(question, images, ground_truth=hard_ground_truth(question))


HARD_WORLD = World(WORLD, HARD_TASKS, _hard_questions, _sft_row, _rl_row, render_hard_panel, manifest={"world": WORLD})
