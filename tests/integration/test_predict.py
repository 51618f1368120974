"""Prediction: requests that stay inside the dataset folder, the reference output rows, and crash-safe resume.

Generation runs the real tiny model (session fixture in conftest). `CountingBackend` wraps it: it records which
questions reach it, so a test can tell what a resumed run regenerated, and it prefixes each generated text with its
qid: a random tiny model writes nearly the same text for every question, and a row holding another question's
generation must not pass unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_PIXELS
from PIL import Image

from evisrag_core.data import schema
from evisrag_core.data.schema import load_test_split
from evisrag_core.io import BadRecordError, read_jsonl
from evisrag_core.predict import (
    Backend,
    Decoding,
    Request,
    TransformersBackend,
    build_requests,
    predict_split,
)

GREEDY = Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.05, max_new_tokens=6)


class CountingBackend:
    """A real backend that records the qids it was asked to generate (batch by batch) and labels each text."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.batches: list[list[str | int]] = []

    @property
    def qids(self) -> list[str | int]:
        return [qid for batch in self.batches for qid in batch]

    def generate(self, requests: Sequence[Request]) -> list[str]:
        self.batches.append([r.qid for r in requests])
        return [f"{label(r.qid)}{text}" for r, text in zip(requests, self.inner.generate(requests), strict=True)]


def label(qid: str | int) -> str:
    return f"[{qid}] "


@pytest.fixture
def backend(tiny_model: tuple[Any, Any]) -> CountingBackend:
    model, processor = tiny_model
    return CountingBackend(TransformersBackend(model, processor, GREEDY, "model_card", TINY_PIXELS))


@pytest.fixture(scope="module")
def requests_(tiny_dataset: Path) -> list[Request]:
    split = tiny_dataset / "test" / "ColorSquare"
    return build_requests(load_test_split(split), split, top_k=3, max_images=5)


def record(qid: str | int, images: list[str]) -> schema.TestRecord:
    return schema.TestRecord(qid, "What colour?", images, ["red"], True)


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    """A split folder with images/p1..p4.png, and a secret.png beside (outside) the folder."""
    split = tmp_path / "split"
    (split / "images").mkdir(parents=True)
    for i in range(1, 5):
        Image.new("RGB", (28, 28), (10 * i, 0, 0)).save(split / "images" / f"p{i}.png")
    Image.new("RGB", (28, 28)).save(tmp_path / "secret.png")
    return split


def test_build_requests_resolves_the_top_k_images_in_rank_order(split_dir: Path) -> None:
    images = ["images/p3.png", "images/p1.png", "images/p4.png", "images/p2.png"]
    (request,) = build_requests([record(7, images)], split_dir, top_k=3, max_images=5)
    assert request.qid == 7 and request.query == "What colour?"
    assert request.image_refs == images[:3]
    assert request.images == [str((split_dir / rel).resolve()) for rel in images[:3]]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in request.images)


def test_a_symlink_that_stays_inside_the_split_is_allowed(split_dir: Path) -> None:
    os.symlink(split_dir / "images" / "p1.png", split_dir / "images" / "alias.png")
    (request,) = build_requests([record("q", ["images/alias.png"])], split_dir, top_k=1, max_images=5)
    assert request.images == [str((split_dir / "images" / "p1.png").resolve())]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../secret.png", "points outside the dataset folder"),
        ("images/../../secret.png", "points outside the dataset folder"),
        ("ABSOLUTE", "is absolute"),
        ("images/link.png", "points outside the dataset folder"),
        ("images/missing.png", "not found under"),
    ],
)
def test_build_requests_refuses_paths_outside_the_split(split_dir: Path, path: str, message: str) -> None:
    os.symlink(split_dir.parent / "secret.png", split_dir / "images" / "link.png")
    if path == "ABSOLUTE":
        path = str(split_dir.parent / "secret.png")
    records = [record("ok", ["images/p1.png"]), record("bad", ["images/p2.png", path])]
    with pytest.raises(BadRecordError, match=r"qid bad: image path|qid bad: image '") as excinfo:
        build_requests(records, split_dir, top_k=2, max_images=5)
    assert message in str(excinfo.value)


def test_an_escaping_path_beyond_top_k_is_not_opened(split_dir: Path) -> None:
    (request,) = build_requests([record("q", ["images/p1.png", "../secret.png"])], split_dir, top_k=1, max_images=5)
    assert request.image_refs == ["images/p1.png"]


def test_top_k_above_the_image_limit_is_refused(split_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"top_k=6 exceeds the model's limit of 5 images"):
        build_requests([record("q", ["images/p1.png"])], split_dir, top_k=6, max_images=5)


def test_predict_split_writes_one_reference_row_per_question(
    requests_: list[Request], backend: CountingBackend, tmp_path: Path
) -> None:
    out = tmp_path / "preds" / "ColorSquare.jsonl"
    seen: list[int] = []
    generated = predict_split(requests_, out, backend, batch_size=4, progress=seen.append, extra={"model": "tiny"})
    rows = read_jsonl(out)
    assert generated == len(rows) == len(requests_) == 6
    assert backend.batches == [[r.qid for r in requests_[:4]], [r.qid for r in requests_[4:]]]
    assert sum(seen) == len(requests_)
    for row, request in zip(rows, requests_, strict=True):
        assert set(row) == {"qid", "imgs", "pred", "model"}
        assert row["qid"] == request.qid and row["imgs"] == request.image_refs and row["model"] == "tiny"
        assert isinstance(row["pred"], str) and row["pred"].startswith(label(request.qid))


def test_resume_after_a_crash_generates_only_the_missing_questions(
    requests_: list[Request], backend: CountingBackend, tmp_path: Path
) -> None:
    uninterrupted = tmp_path / "full.jsonl"
    predict_split(requests_, uninterrupted, backend, batch_size=2)
    lines = uninterrupted.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 6

    crashed = tmp_path / "crashed.jsonl"
    torn = lines[2][: len(lines[2]) // 2]  # the third row, cut off mid-write
    crashed.write_text("".join(lines[:2]) + torn, encoding="utf-8")
    resumed = CountingBackend(backend.inner)
    seen: list[int] = []
    generated = predict_split(requests_, crashed, resumed, batch_size=2, progress=seen.append)

    assert generated == 4
    assert resumed.qids == [r.qid for r in requests_[2:]]
    assert sum(seen) == 6
    assert crashed.read_bytes() == uninterrupted.read_bytes()  # the torn line is gone, nothing is doubled
    rows = read_jsonl(crashed)
    assert sorted(str(r["qid"]) for r in rows) == sorted(str(r.qid) for r in requests_)
    assert rows == read_jsonl(uninterrupted)  # greedy decoding, same batches: the same rows in the same order

    again = CountingBackend(backend.inner)
    assert predict_split(requests_, crashed, again, batch_size=2) == 0
    assert again.batches == [] and read_jsonl(crashed) == rows


def test_resume_after_a_crash_between_row_and_newline(
    requests_: list[Request], backend: CountingBackend, tmp_path: Path
) -> None:
    uninterrupted = tmp_path / "full.jsonl"
    predict_split(requests_, uninterrupted, backend, batch_size=2)
    lines = uninterrupted.read_text(encoding="utf-8").splitlines(keepends=True)
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[:2]).rstrip("\n"), encoding="utf-8")  # row 2 written, its newline not
    predict_split(requests_, crashed, CountingBackend(backend.inner), batch_size=2)
    assert read_jsonl(crashed) == read_jsonl(uninterrupted)


def test_a_half_written_batch_is_generated_whole_again(
    requests_: list[Request], backend: CountingBackend, tmp_path: Path
) -> None:
    """Resumed batches are the uninterrupted run's: padding, and so greedy outputs, cannot differ after a crash."""
    uninterrupted = tmp_path / "full.jsonl"
    predict_split(requests_, uninterrupted, backend, batch_size=4)
    lines = uninterrupted.read_text(encoding="utf-8").splitlines(keepends=True)
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[:2]), encoding="utf-8")  # killed after 2 rows of the first batch of 4
    resumed = CountingBackend(backend.inner)
    assert predict_split(requests_, crashed, resumed, batch_size=4) == 4
    assert resumed.batches == [[r.qid for r in requests_[:4]], [r.qid for r in requests_[4:]]]
    assert crashed.read_bytes() == uninterrupted.read_bytes()


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ('{"qid": "not-a-test-qid", "imgs": [], "pred": "x"}\n', "is not in the test set"),
        ('{"qid": "QID0", "imgs": [], "pred": "x"}\n{"qid": "QID1", "im\n', "unreadable prediction row"),
        ('{"qid": "QID0", "imgs": []}\n{"qid": "QID1", "imgs": [], "pred": "x"}\n', "unreadable prediction row"),
    ],
)
def test_an_existing_file_with_foreign_or_damaged_rows_is_refused(
    requests_: list[Request], backend: CountingBackend, tmp_path: Path, existing: str, message: str
) -> None:
    out = tmp_path / "preds.jsonl"
    text = existing.replace("QID0", str(requests_[0].qid)).replace("QID1", str(requests_[1].qid))
    out.write_text(text, encoding="utf-8")
    with pytest.raises(BadRecordError, match=message):
        predict_split(requests_, out, backend, batch_size=2)
    assert backend.batches == []
    assert out.read_text(encoding="utf-8") == text  # nothing cut or appended


def test_vllm_backend_without_its_environment_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from evisrag_core.vllm_engine.backend import VllmBackend
    from evisrag_core.vllm_engine.client import VllmUnavailable

    monkeypatch.setenv("EVISRAG_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(VllmUnavailable, match=r"run `make vllm-env`"):
        VllmBackend("models/base", None, GREEDY, "model_card", TINY_PIXELS)
