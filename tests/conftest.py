"""Shared test fixtures: small on-disk datasets in the reference format, written into pytest's tmp_path, and the
temporary project repositories (git + DVC) that the pipeline tests run in.

The project is not installed into the venv, and pytest puts only `tests/` on sys.path, so the repository root is
added here to make `evisrag_core` importable when running `.venv/bin/pytest` from a checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

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


# --- vLLM (tests/vllm, marker `vllm`, `make test-vllm`) ------------------------------------------------------------


@pytest.fixture
def vllm_env() -> None:
    """The tests marked `vllm` start a real engine with .venv-vllm's python (evisrag_core.vllm_engine). Without that
    environment they skip with the command that builds it, except under CI (CI=true) or `make test-vllm`
    (EVISRAG_REQUIRE_VLLM=1): there a missing environment fails, so none of them can skip silently."""
    from evisrag_core.vllm_engine.client import vllm_python_path

    python = vllm_python_path()
    if python.exists():
        return
    message = f"vLLM's environment is missing ({python}): run `make vllm-env`"
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("EVISRAG_REQUIRE_VLLM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A tiny Qwen2.5-VL with the pipeline's default sizes (params.yaml model.tiny: head_dim 32; TINY_SIZES has
    head_dim 16, which vLLM's CPU attention does not support), random weights, tokenizer trained on the SFT texts."""
    from evisrag_core.config import TinyModelParams
    from evisrag_core.modeling import build_tiny_model

    rows = read_jsonl(tiny_dataset / "train" / SFT_FILE)
    texts = [message["content"] for row in rows for message in row["messages"]]
    out = tmp_path_factory.mktemp("vllm_tiny_model")
    return build_tiny_model(out, TinyModelParams(), texts, seed=0, min_pixels=TINY_PIXELS[0], max_pixels=TINY_PIXELS[1])


@pytest.fixture(scope="session")
def vllm_sft_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, vllm_model_dir: Path) -> Path:
    """`vllm_model_dir` after a short SFT run: answers in the tagged format with varied tokens, so greedy decoding
    has real choices to agree on (the random model repeats one token)."""
    from evisrag_core.config import SFTParams
    from evisrag_core.sft.train import train_sft

    out = tmp_path_factory.mktemp("vllm_sft")
    cfg = SFTParams(
        model_dir=str(vllm_model_dir),
        out_dir=str(out / "model"),
        checkpoint_dir=str(out / "ckpt"),
        learning_rate=2e-3,
        max_steps=40,
        per_device_train_batch_size=4,
        warmup_steps=2,
        save_steps=1000,
    )
    train_sft(cfg, tiny_dataset / "train" / SFT_FILE, 0)
    return out / "model"


# --- Temporary projects for pipeline tests (tests/e2e, tests/integration/test_serve.py) ---------------------------

MakeRepo = Callable[..., dict[str, str]]


def clean_env() -> dict[str, str]:
    """The environment of a project's subprocesses: none of the caller's Prefect, MLflow or pipeline settings (each
    project keeps its own Prefect database and MLflow store), and this venv's scripts first on PATH (dvc.yaml's
    stages run `evisrag`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "EVISRAG_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a loaded 2-core machine starts it slowly
    return env


def copy_checkout(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files, ignored ones left out), copied into `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def small_params(sft_steps: int = 4, rsgrpo_steps: int = 2, predict_batch_size: int = 8) -> str:
    """The repository's params.yaml (as YAML text), shrunk so that each stage takes seconds but still runs every
    code path."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["embedded"].update(n_sft=48, n_rl=8, n_test_per_split=8)
    params["sft"].update(max_steps=sft_steps, save_steps=2, logging_steps=1, warmup_steps=1)
    params["rsgrpo"].update(
        steps=rsgrpo_steps,
        rollout_batch_size=1,
        n=2,
        max_new_tokens=16,
        val_every=0,
        val_size=2,
        save_every=1,
        report_every=1,
        online_filtering=False,
    )
    params["predict"].update(max_new_tokens=24, batch_size=predict_batch_size)
    return yaml.safe_dump(params, sort_keys=False)


def init_repo(
    root: Path, files: dict[str, str] | None = None, checkout: bool = False, dvc_init: bool = False
) -> dict[str, str]:
    """A git repository in `root` holding `files` (path → text) and, with `checkout`, a copy of this working tree;
    `dvc_init` for a project that brings no .dvc/ of its own. One commit of everything; returns `clean_env()`."""
    env = clean_env()
    root.mkdir(parents=True, exist_ok=True)
    if checkout:
        copy_checkout(root)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    commands = [["git", "init", "-q"], *([[sys.executable, "-m", "dvc", "init", "-q"]] if dvc_init else [])]
    for command in [*commands, [*git, "add", "-A"], [*git, "commit", "-qm", "fixture"]]:
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return env


@pytest.fixture(scope="session")
def make_repo() -> MakeRepo:
    """`make_repo(root, files=..., checkout=..., dvc_init=...)`: see `init_repo` (a fixture, so module-scoped
    fixtures of the pipeline tests can build their project with it)."""
    return init_repo
