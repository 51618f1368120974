"""Shared test fixtures: small on-disk datasets in the reference format, written into pytest's tmp_path.

The project is not installed into the venv, and pytest puts only `tests/` on sys.path, so the repository root is
added here to make `evisrag_core` importable when running `.venv/bin/pytest` from a checkout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from evisrag_core.config import TinyModelParams  # noqa: E402
from evisrag_core.data.generator import GeneratorSpec, generate_dataset  # noqa: E402
from evisrag_core.data.schema import SFT_FILE, TEST_FILE  # noqa: E402  (needs REPO_ROOT on sys.path)
from evisrag_core.io import read_jsonl  # noqa: E402

MakeTestSplit = Callable[[str, list[dict[str, Any]]], Path]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty `<data_dir>` (tests add splits with `make_test_split`)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_test_split(data_dir: Path) -> MakeTestSplit:
    """Write `<data_dir>/test/<benchmark>/top3_test.jsonl` from rows; returns the split folder.

    Image paths are only named, not created: loading a split does not open images.
    """

    def make(benchmark: str, rows: list[dict[str, Any]]) -> Path:
        split = data_dir / "test" / benchmark
        split.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row) + "\n" for row in rows]
        (split / TEST_FILE).write_text("".join(lines), encoding="utf-8")
        return split

    return make


# --- A tiny generated dataset and a tiny Qwen2.5-VL built from it, once per test session -------------------------

TINY_SIZES = TinyModelParams(
    vocab_size=400,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vision_depth=2,
    vision_hidden_size=32,
    vision_num_heads=2,
)
TINY_PIXELS = (3136, 12544)  # 56×56 .. 112×112: a 112×112 image is 8×8 patches of 14 → 16 merged image tokens
TINY_SPLITS = ["ColorSquare", "ColorBackground"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset (2 splits × 6 test questions, 3 images each, 112×112); treat it as read-only."""
    out = tmp_path_factory.mktemp("tiny_data")
    spec = GeneratorSpec(seed=0, image_size=112, images_per_question=3, insufficient_fraction=0.25)
    generate_dataset(out, spec, TINY_SPLITS, n_test_per_split=6, n_sft=24, n_rl=4)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A tiny Qwen2.5-VL (random weights, tokenizer trained on the SFT texts) saved with save_pretrained."""
    from evisrag_core.modeling import build_tiny_model  # torch/transformers: imported only when a test needs it

    rows = read_jsonl(tiny_dataset / "train" / SFT_FILE)
    texts = [message["content"] for row in rows for message in row["messages"]]
    out = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_model(out, TINY_SIZES, texts, seed=0, min_pixels=TINY_PIXELS[0], max_pixels=TINY_PIXELS[1])


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple[Any, Any]:
    """(model, processor) loaded once from `tiny_model_dir`; tests must not change the weights."""
    from evisrag_core.modeling import load_model_and_processor

    return load_model_and_processor(tiny_model_dir)


def weight_updates(models: tuple[Any, Any], base: Any) -> tuple[Any, Any]:
    """The flattened parameter change of each of two models from the same `base` model, in one parameter order."""
    import torch

    names = [name for name, _ in base.named_parameters()]
    base_params = dict(base.named_parameters())
    return tuple(torch.cat([(dict(m.named_parameters())[n] - base_params[n]).flatten() for n in names]) for m in models)
