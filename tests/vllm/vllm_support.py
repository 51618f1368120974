"""Fixtures of the tests marked `vllm` (`make test-vllm`): a real vLLM engine in a child process under .venv-vllm.

These tests run under the project's .venv (transformers 5.24 for the policy and the transformers backend) and start
the engine with .venv-vllm's python (`evisrag_core.vllm_engine`). Without that environment they skip with the
command that builds it, except under CI (CI=true) or `make test-vllm` (EVISRAG_REQUIRE_VLLM=1), where a missing
environment is a failure: on this machine kind none of them may skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evisrag_core.config import TinyModelParams
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.io import read_jsonl
from evisrag_core.vllm_engine.client import vllm_python_path

# The pipeline's default tiny sizes (params.yaml model.tiny): head_dim 32. The smaller TINY_SIZES of the other tests
# have head_dim 16, which vLLM's CPU attention does not support.
VLLM_TINY = TinyModelParams()
PIXELS = (3136, 12544)


def _require_vllm_env() -> None:
    python = vllm_python_path()
    if python.exists():
        return
    message = f"vLLM's environment is missing ({python}): run `make vllm-env`"
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("EVISRAG_REQUIRE_VLLM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def vllm_env() -> None:
    _require_vllm_env()


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A tiny Qwen2.5-VL with the pipeline's default sizes (random weights, tokenizer trained on the SFT texts)."""
    from evisrag_core.modeling import build_tiny_model

    rows = read_jsonl(tiny_dataset / "train" / SFT_FILE)
    texts = [message["content"] for row in rows for message in row["messages"]]
    out = tmp_path_factory.mktemp("vllm_tiny_model")
    return build_tiny_model(out, VLLM_TINY, texts, seed=0, min_pixels=PIXELS[0], max_pixels=PIXELS[1])


def token_agreement(expected: list[list[int]], got: list[list[int]]) -> tuple[float, int]:
    """(share of token positions where the two agree, over the longer of each pair; sequences identical)."""
    same = sum(sum(a == b for a, b in zip(e, g, strict=False)) for e, g in zip(expected, got, strict=True))
    total = sum(max(len(e), len(g)) for e, g in zip(expected, got, strict=True))
    return (same / total if total else 1.0), sum(e == g for e, g in zip(expected, got, strict=True))
