"""The embedded dataset generator: determinism, the reference formats it writes, and questions that are answerable
from (and only from) the image they point at.

The images are read back, not trusted: each one holds one flat colour (a plain distractor) or two (no anti-aliasing;
the background covers at least 67 % of the pixels since the square's side is at most 4/7 of the image; a square
has a black frame), and any two
named colours differ by more than twice the ±18 shade jitter in at least one channel, so the nearest named colour of
the majority and minority pixel values gives back the image's Panel.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from evisrag_core.data.generator import (
    COLOURS,
    FRAME_RGB,
    INSUFFICIENT_ANSWER,
    NO_RELEVANT,
    TASKS,
    GeneratorSpec,
    Panel,
    Question,
    generate_dataset,
    make_question,
    render_panel,
    tagged_ground_truth,
    tagged_response,
)
from evisrag_core.data.schema import (
    MANIFEST_FILE,
    RL_FILE,
    SFT_FILE,
    TEST_FILE,
    load_test_split,
    parse_test_record,
)
from evisrag_core.io import read_jsonl
from evisrag_core.prompts import evidence_prompt

SPLITS = ["ColorSquare", "ColorBackground"]
SPEC = GeneratorSpec(seed=3, image_size=112, images_per_question=3, insufficient_fraction=0.3)
SIZES = {"n_test_per_split": 15, "n_sft": 40, "n_rl": 20}
JITTER = 18
QUERIES = {
    "What colour is the square?": "ColorSquare",
    "What colour is the background behind the square?": "ColorBackground",
}
TAGS = ("observe", "evidence", "think", "answer")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    name = min(COLOURS, key=lambda c: max(abs(a - b) for a, b in zip(COLOURS[c], rgb, strict=True)))
    distance = max(abs(a - b) for a, b in zip(COLOURS[name], rgb, strict=True))
    assert distance <= JITTER, f"pixel {rgb} is {distance} away from the nearest named colour {name}"
    return name


def read_panel(path: Path) -> Panel:
    """The Panel an image was rendered from: majority colour = background, minority colour (if any, inside a black
    frame) = square."""
    with Image.open(path) as image:
        colours = sorted(image.convert("RGB").getcolors(), reverse=True)
    named = [rgb for _, rgb in colours if rgb != FRAME_RGB]
    framed = len(named) < len(colours)
    assert len(named) == 1 + framed, f"{path}: expected a flat background and at most one framed square: {colours}"
    if not framed:
        return Panel(nearest_colour(named[0]))
    return Panel(nearest_colour(named[0]), nearest_colour(named[1]))


def split_of(query: str) -> str:
    assert query in QUERIES, f"query {query!r} matches no embedded split"
    return QUERIES[query]


def with_square(panels: tuple[Panel, ...]) -> list[int]:
    """1-based indices of the images that hold a square."""
    return [i + 1 for i, panel in enumerate(panels) if panel.has_square]


def rebuild_question(qid: str, query: str, panels: tuple[Panel, ...]) -> Question:
    """The Question a record must have come from, derived from its query and its images alone."""
    split = split_of(query)
    task = TASKS[split]
    matches = [i - 1 for i in with_square(panels)]
    assert len(matches) <= 1, f"{qid}: {len(matches)} images hold a square"
    if not matches:
        return Question(qid, split, query, panels, INSUFFICIENT_ANSWER, ())
    return Question(qid, split, query, panels, task.value(panels[matches[0]]), (matches[0] + 1,))


def assert_tagged_format(response: str, k: int) -> list[str]:
    """Every tag exactly once and in spec order; the evidence lists [1]..[K]. Returns the evidence texts."""
    for tag in TAGS:
        assert response.count(f"<{tag}>") == 1 and response.count(f"</{tag}>") == 1, (tag, response)
    positions = [response.index(t) for tag in TAGS for t in (f"<{tag}>", f"</{tag}>")]
    assert positions == sorted(positions), response
    return evidence_texts(response, k)


def evidence_texts(response: str, k: int) -> list[str]:
    """The texts of `[1]: … [K]: …` inside the evidence block, checking the indices run 1..K in order."""
    evidence = response[response.index("<evidence>") + len("<evidence>") : response.index("</evidence>")]
    entries = re.split(r"\[(\d+)\]: ", evidence)
    assert entries[0].strip() == "", evidence
    assert [int(i) for i in entries[1::2]] == list(range(1, k + 1)), evidence
    return [text.strip() for text in entries[2::2]]


def block(response: str, tag: str) -> str:
    return response[response.index(f"<{tag}>") : response.index(f"</{tag}>") + len(f"</{tag}>")]


def query_of(user_text: str) -> str:
    """The question inside a record's whole user text (the evidence prompt's `Question:` line)."""
    match = re.search(r"\nQuestion: (.*)\n", user_text)
    assert match, user_text
    return match.group(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("generated")
    return out, generate_dataset(out, SPEC, SPLITS, **SIZES)


def test_colour_palette_is_decodable_despite_jitter() -> None:
    """The precondition of read_panel: named colours are more than 2 × jitter apart in some channel."""
    for a, b in combinations(COLOURS.values(), 2):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 2 * JITTER, (a, b)


def test_same_spec_writes_byte_identical_files(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", SPEC, SPLITS, **SIZES)
    second = generate_dataset(tmp_path / "b", SPEC, SPLITS, **SIZES)
    hashes = file_hashes(tmp_path / "a")
    assert first == second
    assert hashes == file_hashes(tmp_path / "b")
    assert len(hashes) == 1 + 2 + 3 + 3 * (2 * 15 + 40 + 20)  # manifest, 2 test files, sft + rl + dataset_info, images


def test_different_seed_writes_different_data(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", SPEC, SPLITS, **SIZES)
    other = GeneratorSpec(SPEC.seed + 1, SPEC.image_size, SPEC.images_per_question, SPEC.insufficient_fraction)
    generate_dataset(tmp_path / "b", other, SPLITS, **SIZES)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in (f"test/ColorSquare/{TEST_FILE}", f"train/{SFT_FILE}", f"train/{RL_FILE}"):
        assert a[name] != b[name], name
    images = [name for name in a if name.endswith(".png")]
    assert sum(a[name] != b[name] for name in images) > len(images) // 2


def test_manifest_counts_and_generator_params(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = dataset
    assert manifest["counts"] == {"test/ColorSquare": 15, "test/ColorBackground": 15, "train/sft": 40, "train/rl": 20}
    assert manifest["benchmarks"] == SPLITS
    assert manifest["generator"]["seed"] == SPEC.seed
    assert json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8")) == manifest


@pytest.mark.parametrize("split", SPLITS)
def test_test_rows_validate_and_point_at_their_images(dataset: tuple[Path, dict[str, Any]], split: str) -> None:
    out, _ = dataset
    split_dir = out / "test" / split
    rows = read_jsonl(split_dir / TEST_FILE)
    records = load_test_split(split_dir)
    assert len(records) == len(rows) == 15
    for line_no, row in enumerate(rows, start=1):
        record = parse_test_record(row, f"{split_dir}:{line_no}")
        assert len(record.image) == SPEC.images_per_question
        for relative in record.image:
            path = split_dir / relative
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (112, 112)), path
        assert (record.answer == []) == (not record.is_sufficient), row
        assert (record.positives == []) == (not record.is_sufficient), row


@pytest.mark.parametrize("split", SPLITS)
def test_test_rows_agree_with_the_pixels(dataset: tuple[Path, dict[str, Any]], split: str) -> None:
    """A sufficient question's positive is the one image that holds a square, and the asked feature of it is the
    answer; an insufficient question's images are all plain. Backgrounds never repeat within a question."""
    out, _ = dataset
    split_dir = out / "test" / split
    task = TASKS[split]
    for record in load_test_split(split_dir):
        panels = tuple(read_panel(split_dir / rel) for rel in record.image)
        assert split_of(record.query) == split
        squares = with_square(panels)
        if record.is_sufficient:
            assert squares == record.positives, record
            assert record.answer == [task.value(panels[squares[0] - 1])], record
        else:
            assert squares == [], record
        assert len({p.background for p in panels}) == len(panels), f"{record.qid}: two images share a background"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("insufficient", [False, True])
def test_make_question_names_exactly_the_positive_image(split: str, k: int, insufficient: bool) -> None:
    rng = random.Random(f"{split}-{k}-{insufficient}")
    task = TASKS[split]
    for index in range(40):
        question = make_question(rng, split, f"q{index}", k, insufficient)
        assert split_of(question.query) == split
        named = with_square(question.panels)
        assert len(question.panels) == k
        assert all(p.background != p.square for p in question.panels)
        assert len({p.background for p in question.panels}) == k
        if insufficient:
            assert (named, question.positives, question.answer) == ([], (), INSUFFICIENT_ANSWER)
            assert not question.is_sufficient
        else:
            assert named == list(question.positives) and len(named) == 1
            assert question.answer == task.value(question.panels[named[0] - 1])
            assert question.is_sufficient


@pytest.mark.parametrize("size", [32, 112, 224])
def test_the_square_always_covers_the_central_half_of_the_image(size: int) -> None:
    """Wherever the square lands, it and its black frame cover the central half of the image (at 112 px: the four
    central 28-px merged patches), and its colour is at the centre."""
    rng = random.Random(size)
    for _ in range(50):
        panel = Panel("blue", "orange")
        image = render_panel(panel, size, rng)
        centre = image.crop((size // 4, size // 4, size - size // 4, size - size // 4))
        colours = {rgb for _, rgb in centre.getcolors()}
        assert FRAME_RGB in colours and len(colours) == 2  # square and its frame, no background
        assert nearest_colour(centre.getpixel((centre.width // 2, centre.height // 2))) == "orange"
        assert nearest_colour(image.getpixel((0, 0))) == "blue"  # the corner stays background
    plain = render_panel(Panel("red"), size, rng)
    assert len(plain.getcolors()) == 1


def test_more_images_than_colours_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 6 images"):
        make_question(random.Random(0), "ColorSquare", "q", len(COLOURS) + 1, False)


@pytest.mark.parametrize(("fraction", "low", "high"), [(0.0, 0.0, 0.0), (0.3, 0.22, 0.38), (1.0, 1.0, 1.0)])
def test_insufficient_fraction_follows_the_parameter(tmp_path: Path, fraction: float, low: float, high: float) -> None:
    spec = GeneratorSpec(seed=11, image_size=32, images_per_question=3, insufficient_fraction=fraction)
    generate_dataset(tmp_path, spec, ["ColorSquare"], n_test_per_split=300, n_sft=1, n_rl=1)
    records = load_test_split(tmp_path / "test" / "ColorSquare")
    share = sum(not r.is_sufficient for r in records) / len(records)
    assert low <= share <= high, share


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("insufficient", [False, True])
def test_tagged_response_format(split: str, k: int, insufficient: bool) -> None:
    rng = random.Random(f"tagged-{split}-{k}-{insufficient}")
    for index in range(20):
        question = make_question(rng, split, f"q{index}", k, insufficient)
        response = tagged_response(question)
        evidence = assert_tagged_format(response, k)
        for i, text in enumerate(evidence, start=1):
            if i in question.positives:
                assert text == TASKS[split].evidence(question.panels[i - 1])
                assert question.answer in text
            else:
                assert text == NO_RELEVANT
        assert block(response, "answer") == f"<answer>{question.answer}</answer>"
        truth = tagged_ground_truth(question)
        assert truth == f"{block(response, 'evidence')}\n<answer>{question.answer}</answer>"
        assert "<observe>" not in truth and "<think>" not in truth


def test_sft_rows_are_conversations_with_one_image_placeholder_per_image(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dataset
    train = out / "train"
    rows = read_jsonl(train / SFT_FILE)
    assert len(rows) == 40
    assert {split_of(query_of(row["messages"][1]["content"])) for row in rows} == set(SPLITS)  # both tasks
    for row in rows:
        system, user, assistant = row["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert system["content"] == "You are a helpful assistant."  # Qwen2-VL's default: the same rendered chat
        assert len(row["images"]) == SPEC.images_per_question
        query = query_of(user["content"])
        # LLaMA-Factory's form: the whole user text, the markers after the question (where the images go)
        assert user["content"] == evidence_prompt(query) + "<image>" * len(row["images"])
        assert user["content"].count("<image>") == len(row["images"])
        panels = tuple(read_panel(train / rel) for rel in row["images"])
        assert assistant["content"] == tagged_response(rebuild_question(row["id"], query, panels))


def test_rl_rows_hold_the_tagged_ground_truth(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dataset
    train = out / "train"
    rows = read_jsonl(train / RL_FILE)
    assert len(rows) == 20
    for row in rows:
        panels = tuple(read_panel(train / rel) for rel in row["image"])
        question = rebuild_question(row["id"], query_of(row["prompt"]), panels)
        # EasyR1's form: `prompt` is the whole user text, the same text as an SFT user turn
        assert row["prompt"] == evidence_prompt(question.query) + "<image>" * len(row["image"])
        assert row["answer"] == tagged_ground_truth(question)
        assert row["is_sufficient"] == question.is_sufficient
        assert evidence_texts(row["answer"], 3)


def test_train_folder_is_a_llamafactory_dataset(dataset: tuple[Path, dict[str, Any]]) -> None:
    """`llamafactory-cli --dataset_dir <data>/train --dataset evidencecot` reads sft.jsonl with its system turns."""
    out, _ = dataset
    info = json.loads((out / "train" / "dataset_info.json").read_text())
    entry = info["evidencecot"]
    assert (entry["file_name"], entry["formatting"]) == (SFT_FILE, "sharegpt")
    assert entry["columns"] == {"messages": "messages", "images": "images"}
    assert entry["tags"]["system_tag"] == "system"


@pytest.mark.parametrize("splits", [["ColorShape"], ["ColorSquare", "colorbackground"]])
def test_unknown_split_is_refused_before_anything_is_written(tmp_path: Path, splits: list[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown embedded split.*\['ColorBackground', 'ColorSquare'\]"):
        generate_dataset(tmp_path / "out", SPEC, splits, **SIZES)
    assert not (tmp_path / "out").exists()
