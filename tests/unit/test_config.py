"""params.yaml validation: defaults, the repository's own file, and the errors a user sees for a bad file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from evisrag_core.config import (
    DataParams,
    EmbeddedDataParams,
    Params,
    ParamsError,
    PredictParams,
    TinyModelParams,
    load_params,
    parse_params,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_params_file_is_refused_not_read_as_the_defaults(tmp_path: Path, text: str) -> None:
    empty = tmp_path / "params.yaml"
    empty.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match=r"params\.yaml is empty; copy the repository's params\.yaml"):
        load_params(empty)


def test_a_params_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("predict: [1\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"(?s)params\.yaml is not valid YAML: .*line 1"):
        load_params(path)


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every key of a nested mapping as a dotted path, except inside free-form mappings (tracking.tags)."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "tracking.tags":
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def test_params_yaml_lists_every_key_with_the_code_default() -> None:
    """One source of truth: a reader of params.yaml sees the values the code would use without it."""
    in_file = _leaves(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")))
    in_code = _leaves(Params().model_dump())
    assert sorted(in_file) == sorted(in_code)
    differing = {key: (in_file[key], in_code[key]) for key in in_code if in_file[key] != in_code[key]}
    assert differing == {}, "params.yaml value, code default"
    assert load_params(REPO_ROOT / "params.yaml") == Params()


def test_repository_params_yaml_validates() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)


def test_values_from_the_file_are_used(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"seed": 7, "predict": {"top_k": 2, "temperature": 0.1}})
    params = load_params(path)
    assert (params.seed, params.predict.top_k, params.predict.temperature) == (7, 2, 0.1)
    assert params.predict.max_new_tokens == PredictParams().max_new_tokens  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("raw", "key", "section"),
    [
        ({"seeed": 1}, "seeed", Params),
        ({"predict": {"topk": 3}}, "predict.topk", PredictParams),
        ({"data": {"sorce": "hub"}}, "data.sorce", DataParams),
        ({"data": {"embedded": {"n_tests": 5}}}, "data.embedded.n_tests", EmbeddedDataParams),
        ({"model": {"tiny": {"layers": 2}}}, "model.tiny.layers", TinyModelParams),
    ],
)
def test_unknown_key_names_it_and_lists_the_valid_keys(
    tmp_path: Path, raw: dict[str, Any], key: str, section: type[BaseModel]
) -> None:
    path = write_params(tmp_path, raw)
    with pytest.raises(ParamsError) as excinfo:
        load_params(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert f"unknown key {key!r}" in message
    assert "valid keys here: " + ", ".join(sorted(section.model_fields)) in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"seeed": 1, "predict": {"top_k": 0}})
    with pytest.raises(ParamsError) as excinfo:
        load_params(path)
    message = str(excinfo.value)
    assert "'seeed'" in message and "predict.top_k" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"seed": "zero"}, "seed"),
        ({"predict": {"top_k": "three"}}, "predict.top_k"),
        ({"predict": {"temperature": "hot"}}, "predict.temperature"),
        ({"predict": {"backend": "onnx"}}, "predict.backend"),
        ({"predict": {"prompt_template": "paper"}}, "predict.prompt_template"),
        ({"data": {"benchmarks": "ChartQA"}}, "data.benchmarks"),
        ({"data": {"embedded": {"insufficient_fraction": "half"}}}, "data.embedded.insufficient_fraction"),
        ({"model": {"tiny": {"hidden_size": 12.5}}}, "model.tiny.hidden_size"),
        ({"predict": 3}, "predict"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ParamsError, match=f"  - {re.escape(key)}: "):
        load_params(write_params(tmp_path, raw))


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"predict": {"top_k": 0}}, "predict.top_k"),
        ({"predict": {"top_k": 6}}, "predict.top_k"),
        ({"predict": {"temperature": -0.1}}, "predict.temperature"),
        ({"predict": {"max_new_tokens": -1}}, "predict.max_new_tokens"),
        ({"predict": {"batch_size": 0}}, "predict.batch_size"),
        ({"predict": {"top_p": 0.0}}, "predict.top_p"),
        ({"predict": {"min_pixels": 100}}, "predict.min_pixels"),
        ({"data": {"embedded": {"n_sft": -5}}}, "data.embedded.n_sft"),
        ({"data": {"embedded": {"insufficient_fraction": 1.5}}}, "data.embedded.insufficient_fraction"),
        ({"data": {"embedded": {"images_per_question": 6}}}, "data.embedded.images_per_question"),
        ({"tracking": {"log_predictions_sample": -1}}, "tracking.log_predictions_sample"),
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ParamsError, match=f"  - {re.escape(key)}: "):
        load_params(write_params(tmp_path, raw))


def test_min_pixels_above_max_pixels_is_refused(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"predict": {"min_pixels": 20000, "max_pixels": 12544}})
    with pytest.raises(ParamsError, match=r"min_pixels must not exceed predict\.max_pixels"):
        load_params(path)
    assert load_params(write_params(tmp_path, {"predict": {"min_pixels": 12544, "max_pixels": 12544}}))


@pytest.mark.parametrize("local_dir", [None, ""])
def test_local_source_needs_a_local_dir(local_dir: str | None) -> None:
    with pytest.raises(ParamsError, match=r"data\.local_dir is not set"):
        parse_params({"data": {"source": "local", "local_dir": local_dir}})
    assert parse_params({"data": {"source": "local", "local_dir": "/data/evisrag"}}).data.local_dir == "/data/evisrag"


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"hidden_size": 130, "num_attention_heads": 4}, "hidden_size must be divisible by num_attention_heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "divisible by num_key_value_heads"),
        ({"hidden_size": 96, "num_attention_heads": 8, "num_key_value_heads": 2}, "must be a multiple of 8"),
        ({"vision_hidden_size": 64, "vision_num_heads": 3}, "vision_hidden_size must be divisible by vision_num_heads"),
    ],
)
def test_tiny_model_head_sizes_are_checked(sizes: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TinyModelParams(**sizes)
    with pytest.raises(ParamsError, match=message):
        parse_params({"model": {"tiny": sizes}})


@pytest.mark.parametrize(
    "sizes",
    [
        {"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1},  # head size 8, the smallest
        {"hidden_size": 96, "num_attention_heads": 4, "num_key_value_heads": 4},  # head size 24
        {"vision_hidden_size": 48, "vision_num_heads": 4},
    ],
)
def test_tiny_model_valid_head_sizes_pass(sizes: dict[str, int]) -> None:
    assert TinyModelParams(**sizes).model_dump().items() >= sizes.items()


@pytest.mark.parametrize(("hidden", "heads"), [(40, 4), (36, 2)])
def test_tiny_model_vision_head_size_must_suit_the_rotary_embedding(hidden: int, heads: int) -> None:
    with pytest.raises(ValidationError, match="vision"):
        TinyModelParams(vision_hidden_size=hidden, vision_num_heads=heads)


def test_missing_file_says_where_to_run(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ParamsError, match=r"not found; run from the project root or pass --params"):
        load_params(missing)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match="expected a mapping at the top level"):
        load_params(path)
