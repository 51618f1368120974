"""Each prediction method runs end to end on the tiny model: its text and its images reach the model through the
real processor (concat: one joined image), and `predict_split` writes the reference's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_PIXELS

from evisrag_core.data.schema import load_test_split
from evisrag_core.io import read_jsonl
from evisrag_core.predict import Decoding, Request, TransformersBackend, build_requests, predict_split
from evisrag_core.prompt_methods import METHODS, method_prompt

GREEDY = Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.05, max_new_tokens=4)


@pytest.fixture(scope="module")
def two_questions(tiny_dataset: Path) -> list[Request]:
    split = tiny_dataset / "test" / "ColorSquare"
    return build_requests(load_test_split(split)[:2], split, top_k=3, max_images=5)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_predicts_on_the_tiny_model(
    method: str, two_questions: list[Request], tiny_model: tuple[Any, Any], tmp_path: Path
) -> None:
    model, processor = tiny_model
    backend = TransformersBackend(model, processor, GREEDY, "model_card", TINY_PIXELS, method)

    inputs = backend.encode(two_questions)
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    images_per_row = (inputs["input_ids"] == vision_start).sum(dim=1).tolist()
    assert images_per_row == [1 if METHODS[method].concat else 3] * 2
    prompt = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert method_prompt(method, two_questions[0].query, "model_card") in prompt

    out = tmp_path / "ColorSquare.jsonl"
    assert predict_split(two_questions, out, backend, batch_size=2) == 2
    rows = read_jsonl(out)
    assert [row["qid"] for row in rows] == [r.qid for r in two_questions]
    assert all(isinstance(row["pred"], str) and row["imgs"] for row in rows)
