"""Bad input, case by case (issue 6): each gets a clear error naming the file/record and what to do, or, under
`on_bad_record: skip`, a counted skip that loses nothing already done.

One test (or parametrised case id) per case, named after it, so the table in the README maps onto this file:
images (missing, zero-byte, truncated, not an image, decompression bomb, enormous, odd colour modes, too many,
none, escaping the dataset), records (invalid JSON, non-UTF-8, missing/mistyped fields, duplicate qids), prediction
files (unknown/missing qids), model outputs (no tags, duplicated, unclosed, thousands of tokens), params.yaml
(unknown key, wrong type, out of range), checkpoints of another architecture, and a full disk while writing.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, TINY_PIXELS
from PIL import Image

from evisrag_core import images as image_io
from evisrag_core.bad_records import BadRecords
from evisrag_core.config import ParamsError, PredictParams, parse_params
from evisrag_core.data.schema import RL_FILE, SFT_FILE, TEST_FILE, load_test_split
from evisrag_core.evaluate import evaluate_dir, evaluate_split, read_predictions
from evisrag_core.io import BadRecordError, read_jsonl, write_json_atomic
from evisrag_core.metrics import score_prediction
from evisrag_core.parsing import extract_answer, extract_block
from evisrag_core.predict import Decoding, Request, build_requests, predict_split
from evisrag_core.rsgrpo.rewards import score

REAL_PAGE = REPO_ROOT.parent / "shared" / "data" / "real_infovqa" / "infovqa_0.jpg"  # 564×3040 JPEG
PIXELS = (3136, 12544)
TAGGED = (
    "<observe>two images</observe>\n<evidence>[1]: a red square [2]: no relevant information</evidence>\n"
    "<think>image 1 shows it</think>\n<answer>red</answer>"
)
GROUND_TRUTH = "<evidence>[1]: a red square [2]: no relevant information</evidence><answer>red</answer>"


# --- helpers -------------------------------------------------------------------------------------------------------


def save_png(path: Path, size: tuple[int, int] = (28, 28), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def noisy_png(path: Path, side: int = 64) -> Path:
    """A PNG whose pixel data does not compress to nothing, so cutting the file really truncates pixels."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    image.save(path)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A 60-byte PNG that claims a width × height canvas: what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def record_row(qid: str | int, images: list[str], **fields: Any) -> dict[str, Any]:
    row = {"qid": qid, "query": "What colour is the square?", "image": images, "answer": ["red"]}
    return row | {"is_sufficient": True} | fields


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = [line if isinstance(line, bytes) else line.encode("utf-8") for line in lines]
    path.write_bytes(b"".join(line + b"\n" for line in raw))
    return path


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A test split with three good 28×28 images (images/p0..p2.png) and no records yet."""
    folder = tmp_path / "data" / "test" / "Bench"
    for i in range(3):
        save_png(folder / "images" / f"p{i}.png", colour=(60 * i, 90, 200))
    return folder


GOOD = ["images/p0.png", "images/p1.png", "images/p2.png"]


def requests_for(split_dir: Path, images: list[str], bad: BadRecords | None = None) -> list[Request]:
    write_lines(split_dir / TEST_FILE, [json.dumps(record_row("q0", GOOD)), json.dumps(record_row("q1", images))])
    return build_requests(load_test_split(split_dir), split_dir, 3, 5, bad)


# --- images ----------------------------------------------------------------------------------------------------------


def test_missing_image_file_names_the_record_and_says_to_download(split: Path) -> None:
    with pytest.raises(BadRecordError, match=r"qid q1: image 'images/gone\.png' not found .*evisrag download"):
        requests_for(split, ["images/p0.png", "images/gone.png"])


def test_missing_image_file_is_a_counted_skip(split: Path) -> None:
    bad = BadRecords("skip")
    requests = requests_for(split, ["images/gone.png"], bad)
    assert [r.qid for r in requests] == ["q0"]
    assert bad.count == 1 and "gone.png" in bad.skipped[0]


def test_zero_byte_image_is_not_a_readable_image(split: Path) -> None:
    (split / "images" / "empty.png").write_bytes(b"")
    with pytest.raises(BadRecordError, match=r"qid q1: .*empty\.png is not a readable image .*replace the file"):
        requests_for(split, ["images/empty.png"])


def test_truncated_image_fails_to_decode_with_the_file_named(split: Path) -> None:
    full = noisy_png(split / "images" / "cut.png").read_bytes()
    (split / "images" / "cut.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(BadRecordError, match=r"qid q1: .*cut\.png does not decode .*truncated, replace it"):
        requests_for(split, ["images/cut.png"])


def test_non_image_file_is_refused(split: Path) -> None:
    (split / "images" / "notes.png").write_text("these are not pixels\n", encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"notes\.png is not a readable image"):
        requests_for(split, ["images/notes.png"])


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(100_000, 100_000, id="beyond-pillow-error-limit"),
        pytest.param(12_000, 9_000, id="between-pillow-warning-and-error"),
    ],
)
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(width, height))
    started = time.perf_counter()
    with pytest.raises(image_io.ImageError, match=r"bomb\.png .*decompression-bomb guard"):
        image_io.load_image(bomb, *PIXELS, where="rec 7")
    assert time.perf_counter() - started < 1.0  # refused from the header: no 10⁸-pixel canvas was allocated


def test_enormous_image_is_resized_to_the_processors_max_pixels(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (10, 120, 240)).save(big)
    image = image_io.load_image(big, *PIXELS)
    width, height = image.size
    assert width * height <= PIXELS[1] and width % 28 == 0 and height % 28 == 0
    assert abs(width / height - 4 / 3) < 0.2  # the aspect ratio survives
    assert image.getpixel((width // 2, height // 2)) == (10, 120, 240)


@pytest.mark.skipif(not REAL_PAGE.is_file(), reason="needs ../shared/data/real_infovqa")
@pytest.mark.parametrize("max_pixels", [12544, 1_568_000])
def test_real_tall_page_gets_exactly_the_pixels_qwen_vl_utils_would_give(max_pixels: int) -> None:
    """Routing images through load_image changes no pixel of what the processor receives."""
    from qwen_vl_utils import fetch_image

    ours = image_io.load_image(REAL_PAGE, 3136, max_pixels)
    reference = fetch_image({"image": str(REAL_PAGE), "min_pixels": 3136, "max_pixels": max_pixels})
    assert ours.size == reference.size and ours.size[0] * ours.size[1] <= max_pixels
    assert ours.tobytes() == reference.tobytes()


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (56, 56), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(
    ("make", "suffix", "expected"),
    [
        pytest.param(lambda: Image.new("L", (56, 56), 128), "png", (128, 128, 128), id="grayscale"),
        pytest.param(lambda: Image.new("1", (56, 56), 1), "png", (255, 255, 255), id="bilevel"),
        pytest.param(lambda: Image.new("CMYK", (56, 56), (0, 255, 255, 0)), "tiff", (255, 0, 0), id="cmyk"),
        pytest.param(lambda: _palette_image(False), "png", (10, 200, 30), id="palette"),
        pytest.param(lambda: _palette_image(True), "png", (255, 255, 255), id="palette-transparent"),
        pytest.param(lambda: Image.new("RGBA", (56, 56), (255, 0, 0, 0)), "png", (255, 255, 255), id="alpha-clear"),
        pytest.param(lambda: Image.new("RGBA", (56, 56), (0, 0, 255, 255)), "png", (0, 0, 255), id="alpha-opaque"),
        pytest.param(lambda: Image.new("LA", (56, 56), (0, 0)), "png", (255, 255, 255), id="gray-alpha"),
    ],
)
def test_grayscale_cmyk_palette_and_alpha_images_become_rgb(
    tmp_path: Path, make: Any, suffix: str, expected: tuple[int, int, int]
) -> None:
    path = tmp_path / f"odd.{suffix}"
    make().save(path)
    image = image_io.load_image(path, *PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((10, 10)) == expected  # transparent pixels are white, as qwen_vl_utils makes RGBA ones


def test_odd_colour_modes_go_through_the_model(tiny_model: tuple[Any, Any], tmp_path: Path) -> None:
    """Grayscale, CMYK, palette and alpha pages in one question reach the real tiny model and give an answer."""
    from evisrag_core.predict import TransformersBackend

    paths = []
    for name, image in [
        ("gray.png", Image.new("L", (112, 112), 90)),
        ("cmyk.tiff", Image.new("CMYK", (112, 112), (0, 255, 255, 0))),
        ("palette.png", _palette_image(False)),
        ("alpha.png", Image.new("RGBA", (112, 112), (0, 0, 255, 100))),
    ]:
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    model, processor = tiny_model
    backend = TransformersBackend(model, processor, Decoding(0.0, 1.0, 1.0, 4), "model_card", TINY_PIXELS)
    [text] = backend.generate([Request("q", "What colour?", paths, paths)])
    assert isinstance(text, str)


def test_more_images_than_the_model_limit(split: Path) -> None:
    """top_k above the per-prompt limit is refused; a record listing more images than top_k uses its top-K only."""
    write_lines(split / TEST_FILE, [json.dumps(record_row("q0", [*GOOD, "images/never.png", "images/opened.png"]))])
    records = load_test_split(split)
    with pytest.raises(ValueError, match=r"top_k=6 exceeds the model's limit of 5 images per prompt"):
        build_requests(records, split, 6, 5)
    with pytest.raises(ValueError, match=r"predict\.top_k"):
        parse_params({"predict": {"top_k": 6}})
    [request] = build_requests(records, split, 3, 5)  # images 4 and 5 do not exist and are never opened
    assert request.image_refs == GOOD


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        pytest.param("test", record_row("q0", []), r"field 'image' must be a non-empty list", id="test-record"),
        pytest.param("sft", None, r"'images' must be a non-empty list", id="sft-record"),
        pytest.param("rl", None, r"'image' \(non-empty list\)", id="rl-record"),
    ],
)
def test_zero_images_are_refused(
    tiny_dataset: Path, tmp_path: Path, kind: str, row: dict[str, Any] | None, message: str
) -> None:
    from evisrag_core.data.schema import load_conversations, load_rl_prompts

    if kind == "test":
        folder = tmp_path / "t"
        write_lines(folder / TEST_FILE, [json.dumps(row)])
        with pytest.raises(BadRecordError, match=rf"{TEST_FILE}:1: {message}"):
            load_test_split(folder)
        return
    train = shutil.copytree(tiny_dataset / "train", tmp_path / "train")
    name = SFT_FILE if kind == "sft" else RL_FILE
    first = read_jsonl(train / name)[0]
    if kind == "sft":
        first["images"] = []
        first["messages"][0]["content"] = first["messages"][0]["content"].replace("<image>", "")
    else:
        first["image"] = []
    write_lines(train / name, [json.dumps(first)])
    loader = load_conversations if kind == "sft" else load_rl_prompts
    with pytest.raises(BadRecordError, match=rf"{name}:1: .*{message}"):
        loader(train / name)


@pytest.mark.parametrize(
    ("make_ref", "message"),
    [
        pytest.param(lambda split: "../outside.png", "points outside the dataset folder", id="dot-dot"),
        pytest.param(lambda split: str(split.parent / "outside.png"), "is absolute", id="absolute"),
        pytest.param(lambda split: "images/link.png", "points outside the dataset folder", id="symlink-out"),
    ],
)
def test_image_path_escaping_the_dataset_is_refused(split: Path, make_ref: Any, message: str) -> None:
    outside = save_png(split.parent / "outside.png")
    (split / "images" / "link.png").symlink_to(outside)
    with pytest.raises(BadRecordError, match=rf"qid q1: image path .* {message}"):
        requests_for(split, [make_ref(split)])
    bad = BadRecords("skip")
    assert [r.qid for r in requests_for(split, [make_ref(split)], bad)] == ["q0"] and bad.count == 1


# --- records ---------------------------------------------------------------------------------------------------------


def _train_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    return shutil.copytree(tiny_dataset / "train", tmp_path / "train")


def _load(kind: str, folder: Path, bad: BadRecords) -> list[Any]:
    from evisrag_core.data.schema import load_conversations, load_rl_prompts

    if kind == "test":
        return load_test_split(folder, bad)
    if kind == "predictions":
        return read_predictions(folder / "preds.jsonl", bad)
    return load_conversations(folder / SFT_FILE, bad) if kind == "sft" else load_rl_prompts(folder / RL_FILE, bad)


def _file_with_bad_line(kind: str, split: Path, tiny_dataset: Path, tmp_path: Path, bad_line: bytes) -> Path:
    """The kind's file with two good records around `bad_line` (line 2); returns the folder to load from."""
    if kind == "test":
        good = [json.dumps(record_row(f"q{i}", GOOD)) for i in range(2)]
        write_lines(split / TEST_FILE, [good[0], bad_line, good[1]])
        return split
    if kind == "predictions":
        good = [json.dumps({"qid": f"q{i}", "pred": "red"}) for i in range(2)]
        write_lines(split / "preds.jsonl", [good[0], bad_line, good[1]])
        return split
    train = _train_copy(tiny_dataset, tmp_path)
    name = SFT_FILE if kind == "sft" else RL_FILE
    good = [json.dumps(row) for row in read_jsonl(train / name)[:2]]
    write_lines(train / name, [good[0], bad_line, good[1]])
    return train


KINDS = ["test", "predictions", "sft", "rl"]


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_json_line_names_file_and_line(kind: str, split: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    folder = _file_with_bad_line(kind, split, tiny_dataset, tmp_path, b'{"qid": "q9", "query": ')
    with pytest.raises(BadRecordError, match=r"\.jsonl:2: invalid JSON .*fix or remove the line"):
        _load(kind, folder, BadRecords())
    bad = BadRecords("skip")
    assert len(_load(kind, folder, bad)) == 2 and bad.count == 1  # the lines around it are kept


@pytest.mark.parametrize("kind", KINDS)
def test_non_utf8_bytes_name_file_and_line(kind: str, split: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    folder = _file_with_bad_line(kind, split, tiny_dataset, tmp_path, b'{"qid": "caf\xe9"}')
    with pytest.raises(BadRecordError, match=r"\.jsonl:2: not valid UTF-8 .*re-export the file as UTF-8"):
        _load(kind, folder, BadRecords())
    bad = BadRecords("skip")
    assert len(_load(kind, folder, bad)) == 2 and bad.count == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"query": None}, r"missing field 'query'", id="missing-query"),
        pytest.param({"answer": "red"}, r"field 'answer' must be list, got str", id="answer-string-not-list"),
        pytest.param({"answer": []}, r"a sufficient question needs at least one gold answer", id="answer-empty-list"),
        pytest.param({"answer": [3]}, r"field 'answer' must be a list of strings", id="answer-not-strings"),
        pytest.param({"qid": True}, r"field 'qid' must be str or int, got bool", id="qid-bool"),
        pytest.param({"image": "images/p0.png"}, r"field 'image' must be list, got str", id="image-string"),
        pytest.param({"is_sufficient": "yes"}, r"field 'is_sufficient' must be bool", id="sufficient-string"),
    ],
)
def test_missing_or_mistyped_field_names_file_line_and_field(split: Path, change: dict[str, Any], message: str) -> None:
    row = {k: v for k, v in (record_row("q1", GOOD) | change).items() if v is not None}
    write_lines(split / TEST_FILE, [json.dumps(record_row("q0", GOOD)), json.dumps(row)])
    with pytest.raises(BadRecordError, match=rf"{TEST_FILE}:2: {message}"):
        load_test_split(split)
    bad = BadRecords("skip")
    assert [r.qid for r in load_test_split(split, bad)] == ["q0"] and bad.count == 1


def test_empty_answer_list_is_fine_for_an_insufficient_question(split: Path) -> None:
    write_lines(split / TEST_FILE, [json.dumps(record_row("q0", GOOD, answer=[], is_sufficient=False))])
    [record] = load_test_split(split)
    assert record.answer == [] and not record.is_sufficient


def test_duplicate_qids_name_the_second_line(split: Path) -> None:
    rows = [record_row("q0", GOOD), record_row("q1", GOOD), record_row("q0", GOOD, answer=["blue"])]
    write_lines(split / TEST_FILE, [json.dumps(row) for row in rows])
    with pytest.raises(BadRecordError, match=rf"{TEST_FILE}:3: duplicate qid 'q0'; qids must be unique"):
        load_test_split(split)
    bad = BadRecords("skip")
    records = load_test_split(split, bad)
    assert [(r.qid, r.answer) for r in records] == [("q0", ["red"]), ("q1", ["red"])] and bad.count == 1


# --- prediction files ------------------------------------------------------------------------------------------------


@pytest.fixture
def scored_split(make_test_split: Any) -> Path:
    rows = [record_row(f"q{i}", GOOD) for i in range(3)]
    return make_test_split("Bench", rows)


def _preds(folder: Path, rows: list[dict[str, Any]]) -> Path:
    write_lines(folder / "Bench.jsonl", [json.dumps(row) for row in rows])
    return folder


def test_prediction_with_unknown_qid_is_an_error_naming_it(scored_split: Path, tmp_path: Path) -> None:
    preds = [{"qid": f"q{i}", "pred": "<answer>red</answer>"} for i in range(3)] + [{"qid": "zz", "pred": "x"}]
    with pytest.raises(BadRecordError, match=r"Bench\.jsonl: prediction #4 has qid 'zz', which is not in the test"):
        evaluate_dir(scored_split.parents[1], _preds(tmp_path / "preds", preds))


def test_prediction_file_missing_qids_is_an_error_that_says_what_to_do(scored_split: Path, tmp_path: Path) -> None:
    preds = [{"qid": "q0", "pred": "<answer>red</answer>"}]
    with pytest.raises(BadRecordError, match=r"2 of 3 test questions have no prediction: 'q1', 'q2'; .*on_bad_record"):
        evaluate_dir(scored_split.parents[1], _preds(tmp_path / "preds", preds))


def test_unknown_and_missing_qids_under_skip_are_counted_in_the_metrics(scored_split: Path, tmp_path: Path) -> None:
    preds = [{"qid": "q0", "pred": "<answer>red</answer>"}, {"qid": "zz", "pred": "x"}, {"qid": "q0", "pred": "no"}]
    metrics, rows = evaluate_dir(scored_split.parents[1], _preds(tmp_path / "preds", preds), on_bad_record="skip")
    for key in ("Bench", "overall"):
        assert metrics[key]["cnt_skipped_records"] == 2  # unknown qid, second prediction of q0
        assert metrics[key]["cnt_missing_pred"] == 2 and metrics[key]["cnt_global"] == 3
    assert metrics["Bench"]["global_em"] == pytest.approx(1 / 3)  # q0 counts (first prediction), q1/q2 score 0
    assert [row["pred"] for row in rows["Bench"]] == ["<answer>red</answer>", "", ""]


def test_default_metrics_have_no_skip_counts(scored_split: Path, tmp_path: Path) -> None:
    preds = [{"qid": f"q{i}", "pred": "<answer>red</answer>"} for i in range(3)]
    metrics, _ = evaluate_split(load_test_split(scored_split), preds)
    assert "cnt_skipped_records" not in metrics and "cnt_missing_pred" not in metrics


# --- model outputs ---------------------------------------------------------------------------------------------------

LONG = "<observe>" + "look " * 6000 + "</observe><evidence>[1]: red</evidence><think>x</think><answer>red</answer>"
OUTPUTS = {
    "no-tags": "The square is red.",
    "duplicated-tags": TAGGED + "\n<answer>blue</answer>",
    "unclosed-tags": "<observe>two images<evidence>[1]: a red square<think>hm<answer>red",
    "thousands-of-tokens": LONG,
    "thousands-of-tags": "<answer>" * 5000 + "red" + "</answer>" * 5000,
    "empty": "",
}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_model_output_parsing_metrics_and_rewards_cope(name: str) -> None:
    text = OUTPUTS[name]
    started = time.perf_counter()
    answer = extract_answer(text)
    blocks = [extract_block(text, tag) for tag in ("observe", "evidence", "think", "answer")]
    question = score_prediction(text, ["red"], True)
    rewards = score(text, GROUND_TRUTH, response_length=len(text.split()), max_length=1536, min_length=0)
    assert time.perf_counter() - started < 2.0
    assert isinstance(answer, str) and all(b is None or isinstance(b, str) for b in blocks)
    assert all(0.0 <= v <= 1.0 for v in (question.em, question.acc, question.f1))
    assert 0.0 <= rewards["accuracy"] <= 3.0 and 0.0 <= rewards["evidence"] <= 3.0
    assert rewards["format"] in (0.0, 1.0) and -1.0 <= rewards["overlong"] <= 0.0
    assert -3.0 <= rewards["overall"] <= 7.0


def test_model_output_cases_score_as_documented() -> None:
    assert extract_answer(OUTPUTS["no-tags"]) == "The square is red."  # untagged text is scored whole
    assert score_prediction(OUTPUTS["no-tags"], ["red"], True).acc == 1.0
    assert score(OUTPUTS["no-tags"], GROUND_TRUTH, 300)["format"] == 0.0
    assert extract_answer(OUTPUTS["duplicated-tags"]) == "red"  # the first answer block counts
    assert score(OUTPUTS["duplicated-tags"], GROUND_TRUTH, 300)["format"] == 0.0
    assert extract_answer(OUTPUTS["unclosed-tags"]) == "red"  # an unclosed answer runs to the end
    assert extract_block(OUTPUTS["unclosed-tags"], "answer") is None
    assert score(OUTPUTS["unclosed-tags"], GROUND_TRUTH, 300)["accuracy"] == 0.0  # accuracy needs both tags
    assert score(OUTPUTS["thousands-of-tokens"], GROUND_TRUTH, 6010)["overlong"] == -1.0


# --- params.yaml -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"predict": {"on_bad_recrd": "skip"}},
            r"unknown key 'predict.on_bad_recrd'; valid keys here: .*on_bad_record",
            id="unknown-key-lists-valid-keys",
        ),
        pytest.param({"sft": {"learning_rate": "fast"}}, r"sft.learning_rate: .*'fast'", id="wrong-type"),
        pytest.param({"sft": {"learning_rate": -1e-4}}, r"sft.learning_rate: .*greater than 0", id="negative-lr"),
        pytest.param({"rsgrpo": {"n": 1}}, r"rsgrpo.n: .*greater than or equal to 2", id="rsgrpo-n-below-2"),
        pytest.param(
            {"evaluate": {"on_bad_record": "ignore"}}, r"evaluate.on_bad_record: .*'error' or 'skip'", id="policy"
        ),
    ],
)
def test_params_errors_name_the_key(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    from evisrag_core.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_on_bad_record_defaults_to_error_in_every_stage_that_reads_records() -> None:
    params = parse_params({})
    assert {params.predict.on_bad_record, params.evaluate.on_bad_record} == {"error"}
    assert {params.sft.on_bad_record, params.rsgrpo.on_bad_record} == {"error"}
    assert PredictParams(on_bad_record="skip").on_bad_record == "skip"


# --- checkpoints -----------------------------------------------------------------------------------------------------


def _copy_model(source: Path, dest: Path) -> Path:
    return shutil.copytree(source, dest)


def test_checkpoint_of_another_architecture_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from evisrag_core.modeling import ModelLoadError, load_model_and_processor

    folder = _copy_model(tiny_model_dir, tmp_path / "qwen2")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match=r"LlamaForCausalLM.*is not supported.*Qwen2_5_VL"):
        load_model_and_processor(folder)


def test_checkpoint_with_foreign_weights_is_refused_not_loaded_at_random(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A Qwen2.5-VL config over another model's weights: transformers would fill every weight at random."""
    from safetensors.torch import load_file, save_file

    from evisrag_core.modeling import ModelLoadError, load_model_and_processor

    folder = _copy_model(tiny_model_dir, tmp_path / "foreign")
    weights = load_file(folder / "model.safetensors")
    save_file({f"encoder.{k}": v for k, v in weights.items()}, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"weights do not belong to this architecture: \d+ parameters missing"):
        load_model_and_processor(folder)


def test_checkpoint_of_another_model_size_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from evisrag_core.modeling import ModelLoadError, load_model_and_processor

    folder = _copy_model(tiny_model_dir, tmp_path / "resized")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"the weight shapes do not match its config\.json"):
        load_model_and_processor(folder)


# --- a full disk -----------------------------------------------------------------------------------------------------

_LIMITED = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def _run_limited(body: str, limit: int) -> subprocess.CompletedProcess:
    script = _LIMITED.format(root=str(REPO_ROOT), limit=limit) + body
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_full_disk_while_writing_keeps_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"global_em": 0.5})
    before = target.read_bytes()
    body = (
        "from evisrag_core.io import DiskFullError, write_json_atomic\n"
        f"try:\n    write_json_atomic({str(target)!r}, {{'rows': ['x' * 100] * 1000}})\n"
        "except DiskFullError as err:\n    print(err)\n    sys.exit(3)\n"
    )
    result = _run_limited(body, limit=4096)
    assert result.returncode == 3, result.stderr
    assert "metrics.json: disk full while writing" in result.stdout and "is unchanged" in result.stdout
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left behind


def test_full_disk_while_appending_predictions_loses_no_finished_row(tmp_path: Path) -> None:
    """Predictions are appended row by row; a write failing for lack of space stops the run, the rows before it stay,
    and a rerun with space finishes the file with each question once."""
    out = tmp_path / "Bench.jsonl"
    body = f"""
from pathlib import Path
from evisrag_core.predict import Request, predict_split

class Echo:
    def generate(self, requests):
        return ["<answer>" + "red " * 30 + "</answer>" for _ in requests]

requests = [Request(f"q{{i}}", "q", [], []) for i in range(40)]
predict_split(requests, Path({str(out)!r}), Echo(), batch_size=4)
"""
    result = _run_limited(body, limit=2000)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert f"DiskFullError: [Errno 27] {out}: disk full while appending (File too large)" in result.stderr
    assert "the records before this one are kept" in result.stderr
    kept = out.read_bytes()
    assert 0 < len(kept) <= 2000

    class Echo:
        def generate(self, requests: list[Request]) -> list[str]:
            return ["<answer>" + "red " * 30 + "</answer>" for _ in requests]

    requests = [Request(f"q{i}", "q", [], []) for i in range(40)]
    predict_split(requests, out, Echo(), batch_size=4)
    rows = read_jsonl(out)
    assert [row["qid"] for row in rows] == [f"q{i}" for i in range(40)]
    complete = kept[: kept.rfind(b"\n") + 1]
    assert out.read_bytes().startswith(complete)  # the rows written before the failure are untouched


# --- skip keeps what was done; the count reaches the stage's metrics --------------------------------------------------


def test_skip_keeps_finished_predictions_and_counts_bad_records(split: Path, tmp_path: Path) -> None:
    (split / "images" / "empty.png").write_bytes(b"")
    lines = [json.dumps(record_row(f"q{i}", GOOD)) for i in range(3)]
    write_lines(split / TEST_FILE, [lines[0], "not json", lines[1], json.dumps(record_row("q9", ["images/empty.png"]))])
    bad = BadRecords("skip")
    requests = build_requests(load_test_split(split, bad), split, 3, 5, bad)
    assert [r.qid for r in requests] == ["q0", "q1"] and bad.count == 2
    out = tmp_path / "partial" / "Bench.jsonl"
    write_lines(out, [json.dumps({"qid": "q0", "imgs": GOOD, "pred": "done before"})])

    class Label:
        def generate(self, batch: list[Request]) -> list[str]:
            return [f"new {r.qid}" for r in batch]

    assert predict_split(requests, out, Label(), batch_size=8) == 1
    assert [(r["qid"], r["pred"]) for r in read_jsonl(out)] == [("q0", "done before"), ("q1", "new q1")]


def test_sft_skip_count_lands_in_the_training_summary(tiny_dataset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The real SFT stage function: a bad record stops it before training (error) or is skipped and counted."""
    from evisrag_core.config import SFTParams
    from evisrag_core.sft.train import train_sft

    train = _train_copy(tiny_dataset, tmp_path)
    rows = read_jsonl(train / SFT_FILE)[:4]
    broken = rows[1] | {"images": ["../../escape.png", *rows[1]["images"][1:]]}
    write_lines(train / SFT_FILE, [json.dumps(rows[0]), json.dumps(broken), *[json.dumps(r) for r in rows[2:]]])
    common = {
        "model_dir": str(tiny_model_dir),
        "out_dir": str(tmp_path / "sft"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "warmup_steps": 0,
        "save_steps": 100,
        "image_min_pixels": TINY_PIXELS[0],
        "image_max_pixels": TINY_PIXELS[1],
    }
    with pytest.raises(BadRecordError, match=rf"{SFT_FILE}:2: image path '\.\./\.\./escape\.png' points outside"):
        train_sft(SFTParams(**common), train / SFT_FILE, seed=0)
    summary = train_sft(SFTParams(**common, on_bad_record="skip"), train / SFT_FILE, seed=0)
    assert summary["skipped_records"] == 1 and summary["global_step"] == 1


def test_rl_prompts_skip_count(tiny_dataset: Path, tmp_path: Path) -> None:
    from evisrag_core.rsgrpo.train import split_prompts

    train = _train_copy(tiny_dataset, tmp_path)
    rows = read_jsonl(train / RL_FILE)
    rows[0]["answer"] = "red"  # no tagged ground truth
    write_lines(train / RL_FILE, [json.dumps(r) for r in rows])
    with pytest.raises(BadRecordError, match=rf"{RL_FILE}:1: 'answer' must be the tagged ground truth"):
        split_prompts(train / RL_FILE, 1, seed=0)
    bad = BadRecords("skip")
    train_prompts, val_prompts = split_prompts(train / RL_FILE, 1, seed=0, bad=bad)
    assert len(train_prompts) + len(val_prompts) == len(rows) - 1 and bad.count == 1
