"""The embedded default dataset: multi-image colour questions a tiny model can learn on 2 CPU cores.

Each question comes with K images; each image is a flat background colour (all K different). At most one image —
the relevant one — also holds a large square of another colour, in a black frame, near its centre; the others are
plain distractors.
Two splits ask about the relevant image:

- `ColorSquare`:     "What colour is the square?" → the square's colour.
- `ColorBackground`: "What colour is the background behind the square?" → the background's colour.

So the model must look at every image, find the one that holds the evidence (the square), cite it and read the right
feature from it. An insufficient question comes with plain images only: no image holds a square, the answer is
"insufficient to answer" and every evidence line is "no relevant information".

Why relevance is visual here: a probe on a 2-core CPU machine (docs/data.md) found colours learnt quickly by a
1 M-parameter Qwen2.5-VL and shapes not. A first version of this generator named the relevant image's colour in the
question (find "the square on the blue background"); the tiny model learnt to read every colour and to restate the
question, but not to test "this image's colour equals the asked colour" inside a 2-layer model within the 5-minute
budget (evidence picked the right image at chance, EM ≈ 0.3). A square's presence is a feature of the image itself,
which it learns once the square has a black frame (see README, "The embedded default", and render_panel).

The training records are written in the reference's own forms, so the default run reads them exactly as it reads a
user's data (evisrag_core.prompts): SFT conversations as LLaMA-Factory sharegpt messages (a system turn, the user turn
holding the whole evidence prompt with one `<image>` marker per image after the question, the tagged answer) with a
`dataset_info.json` naming them, RL records as EasyR1 rows whose `prompt` is that same whole user text. The system
turn is Qwen2-VL's default text, so the rendered chat is the one a record without a system turn gets.

Everything is a pure function of the seed: the same seed writes byte-identical files.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from evisrag_core.data.schema import (
    IMAGE_PLACEHOLDER,
    INSUFFICIENT_ANSWER,
    LLAMAFACTORY_INFO_FILE,
    MANIFEST_FILE,
    RL_FILE,
    SFT_FILE,
    TEST_FILE,
)
from evisrag_core.errors import UserError
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
NO_RELEVANT = "no relevant information"
DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen2-VL's default system text
SFT_DATASET_NAME = "evidencecot"  # the reference's `llamafactory-cli --dataset evidencecot`
ORDINALS = ("first", "second", "third", "fourth", "fifth")


@dataclass(frozen=True)
class Panel:
    """One image: its background colour and the colour of its square (None: a plain distractor)."""

    background: str
    square: str | None = None

    @property
    def has_square(self) -> bool:
        return self.square is not None


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
    """How a split asks: the question text and which feature of the relevant image is the answer."""

    query: str
    value: Callable[[Panel], str]
    evidence: Callable[[Panel], str]


TASKS: dict[str, _Task] = {
    "ColorSquare": _Task(
        query="What colour is the square?",
        value=lambda p: p.square,
        evidence=lambda p: f"the square on the {p.background} background is {p.square}",
    ),
    "ColorBackground": _Task(
        query="What colour is the background behind the square?",
        value=lambda p: p.background,
        evidence=lambda p: f"the background behind the {p.square} square is {p.background}",
    ),
}


def _panels(rng: random.Random, k: int, target: int | None) -> tuple[Panel, ...]:
    """K images with K different backgrounds; only image `target` (0-based) holds a square, of another colour."""
    names = list(COLOURS)
    backgrounds = rng.sample(names, k)
    panels = [Panel(background) for background in backgrounds]
    if target is not None:
        square = rng.choice([c for c in names if c != backgrounds[target]])
        panels[target] = Panel(backgrounds[target], square)
    return tuple(panels)


def make_question(rng: random.Random, split: str, qid: str, k: int, insufficient: bool) -> Question:
    task = TASKS[split]
    if k > len(COLOURS):
        raise ValueError(f"at most {len(COLOURS)} images per question (one background colour each), got {k}")
    if insufficient:
        return Question(qid, split, task.query, _panels(rng, k, None), INSUFFICIENT_ANSWER, ())
    target = rng.randrange(k)
    panels = _panels(rng, k, target)
    return Question(qid, split, task.query, panels, task.value(panels[target]), (target + 1,))


def jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


FRAME_RGB = (0, 0, 0)


def render_panel(panel: Panel, size: int, rng: random.Random) -> Image.Image:
    """A flat background, with the panel's square (if any) near the centre in a black frame; shades, size and
    position jittered."""
    image = Image.new("RGB", (size, size), jitter(COLOURS[panel.background], rng))
    if panel.square is None:
        return image
    return draw_framed_square(image, rng, COLOURS[panel.square], FRAME_RGB)


def draw_framed_square(
    image: Image.Image, rng: random.Random, square_rgb: tuple[int, int, int], frame_rgb: tuple[int, int, int]
) -> Image.Image:
    """Draw a square of `square_rgb` (shade jittered) in a `frame_rgb` frame near the centre of `image`."""
    size = image.width
    # Side 1/2..4/7 of the image, placed so that it always covers the central half [size/4, 3·size/4). The black
    # frame makes "this image holds a square" a colour present in the image (no named colour is dark), which a tiny
    # vision tower detects directly; without it, presence means "some patch differs from the rest", which it did
    # not learn within the budget (README, "The embedded default").
    side = rng.randint(size // 2, size * 4 // 7)
    frame = max(1, size // 16)
    lowest, highest = max(0, size - size // 4 - side), size // 4
    left, top = rng.randint(lowest, highest), rng.randint(lowest, highest)
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, left + side - 1, top + side - 1], fill=frame_rgb)
    inner = [left + frame, top + frame, left + side - 1 - frame, top + side - 1 - frame]
    draw.rectangle(inner, fill=jitter(square_rgb, rng))
    return image


def _observation(index: int, panel: Panel) -> str:
    if panel.square is None:
        return f"The {ORDINALS[index]} image shows no square on a plain {panel.background} background, irrelevant."
    return f"The {ORDINALS[index]} image shows a {panel.square} square on a {panel.background} background, relevant."


def tagged_response(question: Question) -> str:
    """The full target response: observe, per-image evidence, think, answer (spec §1 format)."""
    task = TASKS[question.split]
    observations = " ".join(_observation(i, p) for i, p in enumerate(question.panels))
    evidence = " ".join(
        f"[{i + 1}]: {task.evidence(p) if (i + 1) in question.positives else NO_RELEVANT}"
        for i, p in enumerate(question.panels)
    )
    if question.is_sufficient:
        found = task.evidence(question.panels[question.positives[0] - 1])
        think = f"Image [{question.positives[0]}] shows the square: {found}. So the answer is {question.answer}."
    else:
        think = "No image shows a square, so the images are insufficient to answer."
    return tagged_blocks(observations, evidence, think, question.answer)


def tagged_blocks(observations: str, evidence: str, think: str, answer: str) -> str:
    """The four blocks of a target response, one per line (spec §1 format)."""
    return (
        f"<observe>{observations}</observe>\n<evidence>{evidence}</evidence>\n"
        f"<think>{think}</think>\n<answer>{answer}</answer>"
    )


def tagged_ground_truth(question: Question) -> str:
    """The RL ground truth: the evidence and answer blocks the rewards compare against (spec §2)."""
    return ground_truth_of(tagged_response(question), question.answer)


def ground_truth_of(response: str, answer: str) -> str:
    """The evidence block of a tagged response, then `<answer>answer</answer>`: what an RL row's `answer` holds."""
    evidence = response[response.index("<evidence>") : response.index("</evidence>") + len("</evidence>")]
    return f"{evidence}\n<answer>{answer}</answer>"


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything the generated data depends on; the same spec writes byte-identical files."""

    seed: int
    image_size: int
    images_per_question: int
    insufficient_fraction: float


def question_stream(
    make: Callable[..., Any], stream: str, spec: GeneratorSpec, split_names: list[str], count: int, prefix: str
):
    """`count` questions cycling through `split_names`, drawn by `make(rng, split, qid, k, insufficient)` from the
    random stream `<seed>-<stream><prefix>` (a world's own `stream` keeps its questions apart from another's)."""
    rng = random.Random(f"{spec.seed}-{stream}{prefix}")
    for index in range(count):
        split = split_names[index % len(split_names)]
        insufficient = rng.random() < spec.insufficient_fraction
        yield make(rng, split, f"{prefix}-{index:05d}", spec.images_per_question, insufficient)


_questions = partial(question_stream, make_question, "")


Render = Callable[[Any, int, random.Random], Image.Image]


def _write_images(question: Any, folder: Path, spec: GeneratorSpec, render: Render = render_panel) -> list[str]:
    rng = random.Random(f"{spec.seed}-img-{question.qid}")
    paths = []
    for i, panel in enumerate(question.panels):
        relative = f"images/{question.qid}_{i + 1}.png"
        render(panel, spec.image_size, rng).save(folder / relative, format="PNG")
        paths.append(relative)
    return paths


def test_row(question: Any, images: list[str]) -> dict[str, Any]:
    """A `top3_test.jsonl` row; `positives` lets evaluation score evidence grounding."""
    return {
        "qid": question.qid,
        "query": question.query,
        "image": images,
        "answer": [question.answer] if question.is_sufficient else [],
        "is_sufficient": question.is_sufficient,
        "positives": list(question.positives),
    }


def user_text(question: Any, image_count: int, template: str = "model_card") -> str:
    """The whole user text of a training record: the evidence prompt, then one `<image>` marker per image."""
    return evidence_prompt(question.query, template) + IMAGE_PLACEHOLDER * image_count


def sft_record(
    question: Any, images: list[str], template: str = "model_card", response: str | None = None
) -> dict[str, Any]:
    """A LLaMA-Factory sharegpt conversation: system turn, user turn (`user_text`), the tagged answer (`response`:
    another world's tagged response; by default this world's `tagged_response`)."""
    return {
        "id": question.qid,
        "messages": [
            {"role": "system", "content": DEFAULT_SYSTEM},
            {"role": "user", "content": user_text(question, len(images), template)},
            {"role": "assistant", "content": tagged_response(question) if response is None else response},
        ],
        "images": images,
    }


def llamafactory_dataset_info() -> dict[str, Any]:
    """`dataset_info.json` naming `sft.jsonl` as a LLaMA-Factory sharegpt dataset with OpenAI-style messages."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    return {
        SFT_DATASET_NAME: {
            "file_name": SFT_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {**tags, "system_tag": "system"},
        }
    }


def rl_record(question: Any, images: list[str], ground_truth: str | None = None) -> dict[str, Any]:
    """An EasyR1 row: `prompt` is the whole user text (`user_text`), `answer` the tagged ground truth
    (`ground_truth`: another world's; by default this world's `tagged_ground_truth`)."""
    return {
        "id": question.qid,
        "prompt": user_text(question, len(images)),
        "image": images,
        "answer": tagged_ground_truth(question) if ground_truth is None else ground_truth,
        "is_sufficient": question.is_sufficient,
    }


def write_split(
    folder: Path, file_name: str, questions, spec: GeneratorSpec, to_row, progress, render: Render = render_panel
) -> int:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for question in questions:
        rows.append(to_row(question, _write_images(question, folder, spec, render)))
        progress(1)
    write_jsonl_atomic(folder / file_name, rows)
    return len(rows)


class UnknownSplitError(UserError, ValueError):
    """data.embedded.splits names a split the chosen world does not have (a user error: exit 2, one message)."""


@dataclass(frozen=True)
class World:
    """What makes one embedded world: its question stream, its training rows, its panels. `write_world` writes any
    of them in the same files and forms."""

    name: str  # data.embedded.world
    tasks: Collection[str]  # its splits
    questions: Callable[[GeneratorSpec, list[str], int, str], Iterable[Any]]  # (spec, splits, count, prefix)
    sft_row: Callable[[Any, list[str]], dict[str, Any]]
    rl_row: Callable[[Any, list[str]], dict[str, Any]]
    render: Render
    manifest: dict[str, Any] = field(default_factory=dict)  # extra keys of the manifest's `generator`


def write_world(
    world: World,
    out_dir: Path,
    spec: GeneratorSpec,
    splits: list[str],
    n_test_per_split: int,
    n_sft: int,
    n_rl: int,
    progress: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Write a world's dataset in the project's format (see evisrag_core.data.schema); returns the manifest."""
    unknown = [s for s in splits if s not in world.tasks]
    if unknown:
        raise UnknownSplitError(
            f"unknown embedded split(s) {unknown} for data.embedded.world: {world.name}; set data.embedded.splits to "
            f"some of {sorted(world.tasks)}"
        )
    counts: dict[str, int] = {}
    for split in splits:
        questions = world.questions(spec, [split], n_test_per_split, f"test-{split}")
        folder = out_dir / "test" / split
        counts[f"test/{split}"] = write_split(folder, TEST_FILE, questions, spec, test_row, progress, world.render)
    train = out_dir / "train"
    for file_name, key, count, to_row in ((SFT_FILE, "sft", n_sft, world.sft_row), (RL_FILE, "rl", n_rl, world.rl_row)):
        questions = world.questions(spec, splits, count, key)
        counts[f"train/{key}"] = write_split(train, file_name, questions, spec, to_row, progress, world.render)
    write_json_atomic(train / LLAMAFACTORY_INFO_FILE, llamafactory_dataset_info())
    manifest = {
        "source": "embedded",
        "benchmarks": list(splits),
        "counts": counts,
        "generator": {**spec.__dict__, "splits": list(splits), **world.manifest},
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return manifest


DEFAULT_WORLD = World("default", TASKS, _questions, sft_record, rl_record, render_panel)
# The embedded default world's writer, under the name its many callers (tests, benchmarks) know.
generate_dataset = partial(write_world, DEFAULT_WORLD)
