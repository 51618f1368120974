"""The embedded default dataset: multi-image colour questions a tiny model can learn on 2 CPU cores.

Each image is a flat background colour with one large square of another colour (position, size and shade jittered).
A question names a feature of one image and asks for the other feature of the same image, so the model must look at
every image and pick the right one among distractors whose backgrounds and squares differ:

- `ColorSquare`:     "What colour is the square on the {background} background?" → the square's colour.
- `ColorBackground`: "What colour is the background behind the {square} square?" → the background's colour.

A probe on this machine (../shared/README.md) showed that colour-based selection is learnt in minutes by a
1 M-parameter Qwen2.5-VL while shape-based selection stays at chance, hence colours only. An insufficient question
names a colour that no image has; its answer is "insufficient to answer" and every evidence line is
"no relevant information".

Everything is a pure function of the seed: the same seed writes byte-identical files.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from evisrag_core.data.schema import MANIFEST_FILE, RL_FILE, SFT_FILE, TEST_FILE
from evisrag_core.io import write_json_atomic, write_jsonl_atomic
from evisrag_core.prompts import evidence_prompt

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 135, 20),
}
INSUFFICIENT_ANSWER = "insufficient to answer"
NO_RELEVANT = "no relevant information"
ORDINALS = ("first", "second", "third", "fourth", "fifth")


@dataclass(frozen=True)
class Panel:
    """One image: its background colour and the colour of its square."""

    background: str
    square: str


@dataclass(frozen=True)
class Question:
    qid: str
    split: str
    query: str
    panels: tuple[Panel, ...]
    answer: str
    positives: tuple[int, ...]  # 1-based indices of the images that answer the question

    @property
    def is_sufficient(self) -> bool:
        return bool(self.positives)


@dataclass(frozen=True)
class _Task:
    """How a split asks: which feature names the image (`key`) and which feature is the answer."""

    query: Callable[[str], str]
    key: Callable[[Panel], str]
    value: Callable[[Panel], str]
    evidence: Callable[[Panel], str]


TASKS: dict[str, _Task] = {
    "ColorSquare": _Task(
        query=lambda c: f"What colour is the square on the {c} background?",
        key=lambda p: p.background,
        value=lambda p: p.square,
        evidence=lambda p: f"the square on the {p.background} background is {p.square}",
    ),
    "ColorBackground": _Task(
        query=lambda c: f"What colour is the background behind the {c} square?",
        key=lambda p: p.square,
        value=lambda p: p.background,
        evidence=lambda p: f"the background behind the {p.square} square is {p.background}",
    ),
}


def _panels(rng: random.Random, k: int, task: _Task) -> tuple[Panel, ...]:
    """K panels whose key features are all different, so exactly one image can match a named colour."""
    names = list(COLOURS)
    panels: list[Panel] = []
    used_keys: set[str] = set()
    while len(panels) < k:
        background, square = rng.sample(names, 2)
        panel = Panel(background, square)
        if task.key(panel) not in used_keys:
            used_keys.add(task.key(panel))
            panels.append(panel)
    return tuple(panels)


def make_question(rng: random.Random, split: str, qid: str, k: int, insufficient: bool) -> Question:
    task = TASKS[split]
    panels = _panels(rng, k, task)
    keys = [task.key(p) for p in panels]
    if insufficient:
        asked = rng.choice([c for c in COLOURS if c not in keys])
        return Question(qid, split, task.query(asked), panels, INSUFFICIENT_ANSWER, ())
    target = rng.randrange(k)
    return Question(qid, split, task.query(keys[target]), panels, task.value(panels[target]), (target + 1,))


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def render_panel(panel: Panel, size: int, rng: random.Random) -> Image.Image:
    """A flat background with one large square, shade, size and position jittered."""
    image = Image.new("RGB", (size, size), _jitter(COLOURS[panel.background], rng))
    # Half to two-thirds of the side: the square fills whole merged patches (28 px) yet stays the minority colour.
    side = rng.randint(size // 2, size * 13 // 20)
    left, top = rng.randint(0, size - side), rng.randint(0, size - side)
    ImageDraw.Draw(image).rectangle(
        [left, top, left + side - 1, top + side - 1], fill=_jitter(COLOURS[panel.square], rng)
    )
    return image


def tagged_response(question: Question) -> str:
    """The full target response: observe, per-image evidence, think, answer (spec §1 format)."""
    task = TASKS[question.split]
    observations = " ".join(
        f"The {ORDINALS[i]} image shows a {p.square} square on a {p.background} background."
        for i, p in enumerate(question.panels)
    )
    evidence = " ".join(
        f"[{i + 1}]: {task.evidence(p) if (i + 1) in question.positives else NO_RELEVANT}"
        for i, p in enumerate(question.panels)
    )
    if question.is_sufficient:
        found = task.evidence(question.panels[question.positives[0] - 1])
        think = f"Image [{question.positives[0]}] matches the question: {found}. So the answer is {question.answer}."
    else:
        think = "No image matches the colour named in the question, so the images are insufficient to answer."
    return (
        f"<observe>{observations}</observe>\n<evidence>{evidence}</evidence>\n"
        f"<think>{think}</think>\n<answer>{question.answer}</answer>"
    )


def tagged_ground_truth(question: Question) -> str:
    """The RL ground truth: the evidence and answer blocks the rewards compare against (spec §2)."""
    response = tagged_response(question)
    evidence = response[response.index("<evidence>") : response.index("</evidence>") + len("</evidence>")]
    return f"{evidence}\n<answer>{question.answer}</answer>"


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything the generated data depends on; the same spec writes byte-identical files."""

    seed: int
    image_size: int
    images_per_question: int
    insufficient_fraction: float


def _questions(spec: GeneratorSpec, split_names: list[str], count: int, prefix: str):
    rng = random.Random(f"{spec.seed}-{prefix}")
    for index in range(count):
        split = split_names[index % len(split_names)]
        insufficient = rng.random() < spec.insufficient_fraction
        yield make_question(rng, split, f"{prefix}-{index:05d}", spec.images_per_question, insufficient)


def _write_images(question: Question, folder: Path, spec: GeneratorSpec) -> list[str]:
    rng = random.Random(f"{spec.seed}-img-{question.qid}")
    paths = []
    for i, panel in enumerate(question.panels):
        relative = f"images/{question.qid}_{i + 1}.png"
        render_panel(panel, spec.image_size, rng).save(folder / relative, format="PNG")
        paths.append(relative)
    return paths


def test_row(question: Question, images: list[str]) -> dict[str, Any]:
    """A `top3_test.jsonl` row; `positives` lets evaluation score evidence grounding."""
    return {
        "qid": question.qid,
        "query": question.query,
        "image": images,
        "answer": [question.answer] if question.is_sufficient else [],
        "is_sufficient": question.is_sufficient,
        "positives": list(question.positives),
    }


def sft_record(question: Question, images: list[str], template: str = "model_card") -> dict[str, Any]:
    """A chat conversation in the LLaMA-Factory sharegpt style: one `<image>` placeholder per image."""
    user = evidence_prompt(question.query, template) + "<image>" * len(images)
    return {
        "id": question.qid,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": tagged_response(question)}],
        "images": images,
    }


def rl_record(question: Question, images: list[str]) -> dict[str, Any]:
    return {
        "id": question.qid,
        "prompt": question.query,
        "image": images,
        "answer": tagged_ground_truth(question),
        "is_sufficient": question.is_sufficient,
    }


def _write_split(folder: Path, file_name: str, questions, spec: GeneratorSpec, to_row, progress) -> int:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for question in questions:
        rows.append(to_row(question, _write_images(question, folder, spec)))
        progress(1)
    write_jsonl_atomic(folder / file_name, rows)
    return len(rows)


def generate_dataset(
    out_dir: Path,
    spec: GeneratorSpec,
    splits: list[str],
    n_test_per_split: int,
    n_sft: int,
    n_rl: int,
    progress: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Write the embedded dataset in the project's format (see evisrag_core.data.schema); returns the manifest."""
    unknown = [s for s in splits if s not in TASKS]
    if unknown:
        raise ValueError(f"unknown embedded split(s) {unknown}; choose from {sorted(TASKS)}")
    counts: dict[str, int] = {}
    for split in splits:
        questions = _questions(spec, [split], n_test_per_split, f"test-{split}")
        counts[f"test/{split}"] = _write_split(out_dir / "test" / split, TEST_FILE, questions, spec, test_row, progress)
    train = out_dir / "train"
    counts["train/sft"] = _write_split(
        train, SFT_FILE, _questions(spec, splits, n_sft, "sft"), spec, sft_record, progress
    )
    counts["train/rl"] = _write_split(train, RL_FILE, _questions(spec, splits, n_rl, "rl"), spec, rl_record, progress)
    manifest = {
        "source": "embedded",
        "benchmarks": list(splits),
        "counts": counts,
        "generator": {**spec.__dict__, "splits": list(splits)},
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return manifest
