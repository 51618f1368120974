"""The hard embedded world (`data.embedded.world: hard`, docs/study_estimators.md): every kind of difficulty the
pre-registration names is present, and each record's answer and evidence follow from its images alone (the images are
read back, not trusted). Also: `world: default` stays byte-identical through the world switch.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from evisrag_core.config import parse_params
from evisrag_core.data.generator import NO_RELEVANT, GeneratorSpec, generate_dataset, write_world
from evisrag_core.data.hard_world import (
    FRAMES,
    HARD_COLOURS,
    HARD_TASKS,
    HARD_WORLD,
    NEAR_MISSES,
    HardPanel,
    HardQuestion,
    hard_ground_truth,
    hard_tagged_response,
    make_hard_question,
)
from evisrag_core.data.schema import (
    IMAGE_PLACEHOLDER,
    INSUFFICIENT_ANSWER,
    RL_FILE,
    SFT_FILE,
    load_test_split,
)
from evisrag_core.data.worlds import world_named
from evisrag_core.io import read_jsonl
from evisrag_core.rsgrpo.rewards import accuracy_reward, evidence_reward, format_reward

SPLITS = list(HARD_TASKS)
SPEC = GeneratorSpec(seed=5, image_size=112, images_per_question=3, insufficient_fraction=0.2)
SIZES = {"n_test_per_split": 40, "n_sft": 60, "n_rl": 30}
JITTER = 18


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def nearest(rgb: tuple[int, ...], palette: dict[str, tuple[int, int, int]]) -> str:
    name = min(palette, key=lambda c: max(abs(a - b) for a, b in zip(palette[c], rgb, strict=True)))
    assert max(abs(a - b) for a, b in zip(palette[name], rgb, strict=True)) <= JITTER, (rgb, name)
    return name


def read_panel(path: Path) -> HardPanel:
    """The panel an image was drawn from: majority colour = background; a frame colour (black/white, exact) and the
    remaining colour = the square."""
    with Image.open(path) as image:
        colours = sorted(image.convert("RGB").getcolors(), reverse=True)
    frames = [name for name, rgb in FRAMES.items() if any(c == rgb for _, c in colours)]
    named = [rgb for _, rgb in colours if rgb not in FRAMES.values()]
    assert len(frames) <= 1 and len(named) == 1 + len(frames), (path, colours)
    if not frames:
        return HardPanel(nearest(named[0], HARD_COLOURS))
    return HardPanel(nearest(named[0], HARD_COLOURS), nearest(named[1], HARD_COLOURS), frames[0])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("hard")
    return out, write_world(HARD_WORLD, out, SPEC, SPLITS, **SIZES)


def test_palette_is_decodable_and_has_near_misses() -> None:
    # Any two named colours (and the frames) differ by more than twice the jitter in some channel, so every image
    # decodes; the near-miss pairs are still the closest pairs of the palette.
    palette = {**HARD_COLOURS, **FRAMES}
    for a, b in combinations(palette, 2):
        assert max(abs(x - y) for x, y in zip(palette[a], palette[b], strict=True)) > 2 * JITTER, (a, b)
    for a, b in NEAR_MISSES:
        assert a in HARD_COLOURS and b in HARD_COLOURS


@pytest.mark.parametrize(
    ("split", "panels", "answer", "positives"),
    [
        (
            "HardSquare",
            (HardPanel("red", "blue", "white"), HardPanel("teal", "pink", "black"), HardPanel("green")),
            "pink",
            (2,),
        ),
        (
            "HardBackground",
            (HardPanel("red", "blue", "black"), HardPanel("teal", "pink", "white"), HardPanel("green")),
            "red",
            (1,),
        ),
        (
            "TwoSquares",
            (HardPanel("red", "blue", "black"), HardPanel("teal", "pink", "white"), HardPanel("green", "red", "black")),
            "blue and red",
            (1, 3),
        ),
    ],
)
def test_tagged_response_table(split: str, panels: tuple[HardPanel, ...], answer: str, positives: tuple) -> None:
    question = HardQuestion("q", split, HARD_TASKS[split].query, panels, answer, positives)
    response = hard_tagged_response(question)
    ground_truth = hard_ground_truth(question)
    assert f"<answer>{answer}</answer>" in response
    assert format_reward(response) == 1.0
    # the target scores full marks against its own ground truth
    assert accuracy_reward(response, ground_truth) == 1.0
    assert evidence_reward(response, ground_truth) == 1.0
    evidence = response[response.index("<evidence>") : response.index("</evidence>")]
    for i in range(1, len(panels) + 1):
        item = evidence.split(f"[{i}]: ")[1].split(" [")[0]
        assert (item.strip() != NO_RELEVANT) == (i in positives), (i, item)
    assert "[" not in response[: response.index("</observe>")]  # citations belong in evidence (is_observe)


def test_parts_can_be_right_or_wrong_independently() -> None:
    """The right image cited with a near-miss colour read: full evidence citation, answer wrong; and the other way."""
    question = HardQuestion(
        "q",
        "HardSquare",
        HARD_TASKS["HardSquare"].query,
        (HardPanel("red", "blue", "white"), HardPanel("teal", "orange", "black"), HardPanel("green")),
        "orange",
        (2,),
    )
    truth = hard_ground_truth(question)
    right = hard_tagged_response(question)
    misread = right.replace("is orange", "is red").replace("<answer>orange", "<answer>red")
    assert accuracy_reward(misread, truth) == 0.0 and evidence_reward(misread, truth) > 0.5
    decoy_cited = right.replace(
        "[1]: no relevant information", "[1]: the square in the black frame on the red background is orange"
    )
    assert accuracy_reward(decoy_cited, truth) == 1.0 and evidence_reward(decoy_cited, truth) < 1.0


def test_two_squares_partial_answer_gets_partial_accuracy() -> None:
    question = make_hard_question(random.Random(1), "TwoSquares", "q", 3, insufficient=False)
    first, second = question.answer.split(" and ")
    other = next(c for c in HARD_COLOURS if c not in (first, second))
    half = f"<answer>{first} and {other}</answer>"
    assert 0 < accuracy_reward(half, hard_ground_truth(question)) < 1


def test_every_kind_of_difficulty_is_present(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dataset
    kinds: Counter[str] = Counter()
    for split in SPLITS:
        for record in load_test_split(out / "test" / split):
            panels = [read_panel(out / "test" / split / ref) for ref in record.image]
            decoys = sum(p.is_decoy for p in panels)
            kinds["decoy"] += decoys > 0
            kinds["two images"] += len(record.positives or []) == 2
            kinds["insufficient, looks sufficient"] += (not record.is_sufficient) and decoys > 0
            kinds["insufficient without decoy"] += (not record.is_sufficient) and decoys == 0
            evidence = [p for p in panels if p.is_evidence]
            kinds["near-miss square on its background"] += any(
                {p.square, p.background} in [set(pair) for pair in NEAR_MISSES] for p in evidence
            )
    assert kinds["decoy"] and kinds["two images"] and kinds["insufficient, looks sufficient"]
    assert kinds["near-miss square on its background"]
    assert kinds["insufficient without decoy"] == 0  # every insufficient question looks answerable


def test_answers_and_evidence_follow_from_the_images(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dataset
    for split in SPLITS:
        for record in load_test_split(out / "test" / split):
            panels = [read_panel(out / "test" / split / ref) for ref in record.image]
            evidence = [i + 1 for i, p in enumerate(panels) if p.is_evidence]
            assert list(record.positives or []) == evidence, record.qid
            assert record.is_sufficient == bool(evidence)
            if not evidence:
                assert record.answer == []
                continue
            expected = HARD_TASKS[split].answer([panels[i - 1] for i in evidence])
            assert record.answer == [expected], record.qid
            assert len(evidence) == HARD_TASKS[split].evidence_images
            assert len({p.background for p in panels}) == len(panels)
            assert all(p.square != p.background for p in panels if p.square)


def test_training_records_in_the_reference_forms(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = dataset
    for row in read_jsonl(out / "train" / SFT_FILE):
        _system, user, assistant = row["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert user["content"].count(IMAGE_PLACEHOLDER) == len(row["images"]) == 3
        assert format_reward(assistant["content"]) == 1.0
    for row in read_jsonl(out / "train" / RL_FILE):
        assert row["prompt"].count(IMAGE_PLACEHOLDER) == 3
        assert "<evidence>" in row["answer"] and "<answer>" in row["answer"]
        assert row["is_sufficient"] == (INSUFFICIENT_ANSWER not in row["answer"])
    assert manifest["generator"]["world"] == "hard"
    assert manifest["counts"]["test/TwoSquares"] == SIZES["n_test_per_split"]


def test_hard_world_is_deterministic_and_test_streams_are_disjoint(tmp_path: Path) -> None:
    sizes = {"n_test_per_split": 6, "n_sft": 6, "n_rl": 6}
    write_world(HARD_WORLD, tmp_path / "a", SPEC, SPLITS, **sizes)
    write_world(HARD_WORLD, tmp_path / "b", SPEC, SPLITS, **sizes)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")


def test_default_world_is_unchanged_by_the_switch(tmp_path: Path) -> None:
    spec = GeneratorSpec(seed=2, image_size=56, images_per_question=3, insufficient_fraction=0.2)
    sizes = {"n_test_per_split": 5, "n_sft": 5, "n_rl": 5}
    direct = generate_dataset(tmp_path / "direct", spec, ["ColorSquare", "ColorBackground"], **sizes)
    switched = write_world(
        world_named("default"), tmp_path / "world", spec, ["ColorSquare", "ColorBackground"], **sizes
    )
    assert direct == switched and "world" not in switched["generator"]
    assert file_hashes(tmp_path / "direct") == file_hashes(tmp_path / "world")


@pytest.mark.parametrize(
    ("world", "splits", "message"),
    [
        ("hard", ["ColorSquare"], "world: hard"),
        ("default", ["HardSquare"], "unknown embedded split"),
        ("nowhere", ["HardSquare"], "unknown embedded world"),
    ],
)
def test_splits_must_belong_to_the_world(tmp_path: Path, world: str, splits: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_world(world_named(world), tmp_path, SPEC, splits, 1, 1, 1)


def test_config_world_switch() -> None:
    assert parse_params({}).data.embedded.world == "default"
    assert parse_params({"data": {"embedded": {"world": "hard"}}}).data.embedded.world == "hard"
    with pytest.raises(ValueError, match="world"):
        parse_params({"data": {"embedded": {"world": "harder"}}})
