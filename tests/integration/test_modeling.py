"""The tiny Qwen2.5-VL (built once per session in conftest) and the model loader's guarantees and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_PIXELS, TINY_SIZES
from PIL import Image
from pydantic import ValidationError
from qwen_vl_utils import process_vision_info

from evisrag_core.config import TinyModelParams
from evisrag_core.io import read_jsonl
from evisrag_core.modeling import (
    QWEN_SPECIAL_TOKENS,
    SUPPORTED_ARCHITECTURES,
    ModelLoadError,
    build_tiny_model,
    load_model_and_processor,
    prompt_line_tokens,
)
from evisrag_core.predict import Decoding, Request, TransformersBackend
from evisrag_core.prompts import PROMPT_TEMPLATES, build_messages, evidence_prompt

TOKENS_PER_IMAGE = (112 // 14) ** 2 // (2 * 2)  # 8×8 patches of 14 px, merged 2×2 → 16


def three_images(folder: Path) -> list[str]:
    paths = []
    for i, colour in enumerate([(220, 40, 40), (40, 170, 60), (40, 80, 220)], start=1):
        path = folder / f"page{i}.png"
        Image.new("RGB", (112, 112), colour).save(path)
        paths.append(str(path))
    return paths


def model_inputs(processor: Any, query: str, images: list[str]) -> Any:
    messages = build_messages(query, images, min_pixels=TINY_PIXELS[0], max_pixels=TINY_PIXELS[1])
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, _ = process_vision_info(messages)
    return processor(text=[text], images=image_inputs, return_tensors="pt")


@torch.inference_mode()
def logits_of(model: Any, inputs: Any) -> torch.Tensor:
    return model(**inputs).logits


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_weights_are_safetensors_only(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names


def test_save_load_round_trip_gives_identical_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, processor = load_model_and_processor(tiny_model_dir)
    inputs = model_inputs(processor, "What colour is the square on the red background?", three_images(tmp_path))
    before = logits_of(model, inputs)
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    reloaded, reprocessor = load_model_and_processor(tmp_path / "again")
    again = model_inputs(reprocessor, "What colour is the square on the red background?", three_images(tmp_path))
    assert torch.equal(inputs["input_ids"], again["input_ids"])
    assert torch.equal(before, logits_of(reloaded, again))
    assert before.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))


def test_build_is_deterministic_for_a_seed(tiny_model_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    texts = [m["content"] for row in read_jsonl(tiny_dataset / "train" / "sft.jsonl") for m in row["messages"]]
    rebuilt = build_tiny_model(tmp_path / "m", TINY_SIZES, texts, 0, *TINY_PIXELS)
    assert (rebuilt / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert (rebuilt / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_processor_expands_each_image_into_16_pad_tokens(tiny_model: tuple[Any, Any], tmp_path: Path) -> None:
    _, processor = tiny_model
    inputs = model_inputs(processor, "Which image?", three_images(tmp_path))
    ids = inputs["input_ids"][0].tolist()
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert ids.count(pad) == 3 * TOKENS_PER_IMAGE
    assert ids.count(start) == 3
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    # The text comes first, then the three images, each a run of 16 pads between vision start and end.
    end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    starts = [i for i, token in enumerate(ids) if token == start]
    assert "Question: Which image?" in processor.tokenizer.decode(ids[: starts[0]])
    for i in starts:
        assert ids[i + 1 : i + 1 + TOKENS_PER_IMAGE] == [pad] * TOKENS_PER_IMAGE
        assert ids[i + 1 + TOKENS_PER_IMAGE] == end


def test_generation_with_three_images_returns_only_the_new_text(tiny_model: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = tiny_model
    backend = TransformersBackend(model, processor, Decoding(0.0, 1.0, 1.05, 8), "model_card", TINY_PIXELS)
    request = Request("q1", "What colour is the square on the red background?", three_images(tmp_path), [])
    texts = backend.generate([request])
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert "Question:" not in texts[0]  # the prompt is cut off
    inputs = model_inputs(processor, request.query, request.images)
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, repetition_penalty=1.05, temperature=None, top_p=None
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 8
    assert texts[0] == processor.decode(new, skip_special_tokens=True)


def test_special_tokens_are_single_ids(tiny_model: tuple[Any, Any]) -> None:
    model, processor = tiny_model
    tokenizer = processor.tokenizer
    ids = {}
    for token in QWEN_SPECIAL_TOKENS:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        assert len(encoded) == 1, (token, encoded)
        ids[token] = encoded[0]
    assert len(set(ids.values())) == len(QWEN_SPECIAL_TOKENS)
    assert model.config.image_token_id == ids["<|image_pad|>"]
    assert model.config.vision_start_token_id == ids["<|vision_start|>"]
    assert tokenizer.eos_token_id == ids["<|im_end|>"] == model.generation_config.eos_token_id
    assert tokenizer.pad_token_id == ids["<|endoftext|>"]


@pytest.mark.parametrize("template", sorted(PROMPT_TEMPLATES))
def test_each_fixed_prompt_line_is_one_token_and_the_prompt_decodes_unchanged(
    tiny_model: tuple[Any, Any], template: str
) -> None:
    tokenizer = tiny_model[1].tokenizer
    query = "What colour is the square on the orange background?"
    prompt = evidence_prompt(query, template)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert tokenizer.decode(ids) == prompt
    tokens = tokenizer.convert_ids_to_tokens(ids)
    fixed = [line for line in prompt_line_tokens() if line in prompt]
    assert fixed and all(line in tokens for line in fixed)
    # Only the question (and the blank separator lines of the repository template) remain ordinary BPE tokens.
    assert len(ids) - len(fixed) <= len(tokenizer.encode(f"{query}\n" + "\n" * 8, add_special_tokens=False))
    # A response never contains a prompt line, so its tokens are the plain BPE ones.
    response = "<observe>The question asks about the square on the red background.</observe>"
    assert not set(tokenizer.convert_ids_to_tokens(tokenizer.encode(response))) & set(prompt_line_tokens())


@pytest.mark.parametrize("architectures", [["Qwen2ForCausalLM"], ["Qwen2VLForConditionalGeneration"], []])
def test_folder_of_another_architecture_is_refused(tiny_model_dir: Path, tmp_path: Path, architectures: list) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "other")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = architectures
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=SUPPORTED_ARCHITECTURES[0]):
        load_model_and_processor(folder)


def test_text_only_qwen2_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "qwen2"
    folder.mkdir()
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 32}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"Qwen2ForCausalLM.*is not supported"):
        load_model_and_processor(folder)


@pytest.mark.parametrize(
    "remove",
    [
        pytest.param(["model.safetensors"], id="no-weights"),
        pytest.param(["tokenizer.json", "tokenizer_config.json", "processor_config.json"], id="no-processor"),
    ],
)
def test_incomplete_folder_raises_model_load_error(tiny_model_dir: Path, tmp_path: Path, remove: list[str]) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "incomplete")
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(ModelLoadError, match="cannot load a model"):
        load_model_and_processor(folder)


def test_pickled_weights_are_not_loaded(tiny_model: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = tiny_model
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_and_processor(folder)


def test_missing_folder_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load a model"):
        load_model_and_processor(tmp_path / "absent")


def test_empty_folder_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError):
        load_model_and_processor(tmp_path / "empty")


def test_trust_remote_code_warns(tiny_model_dir: Path) -> None:
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        load_model_and_processor(tiny_model_dir, trust_remote_code=True)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param({"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1}, id="text-head-8"),
        pytest.param({"hidden_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1}, id="text-head-24"),
        pytest.param({"vision_hidden_size": 48, "vision_num_heads": 4}, id="vision-head-12"),
    ],
)
def test_every_accepted_size_runs_a_forward_pass(tmp_path: Path, sizes: dict[str, int]) -> None:
    """Sizes that params.yaml validation lets through must give a model that runs, not a crash at predict time."""
    try:
        params = TinyModelParams(**{**TINY_SIZES.model_dump(), **sizes})
    except ValidationError:
        return  # refused by the config: not an accepted size
    folder = build_tiny_model(tmp_path / "m", params, ["hello world"], seed=0, min_pixels=3136, max_pixels=12544)
    model, processor = load_model_and_processor(folder)
    inputs = model_inputs(processor, "q", three_images(tmp_path)[:1])
    assert logits_of(model, inputs).shape[-1] == len(processor.tokenizer)
