"""Which generation backend prediction uses: `predict.backend: transformers | vllm | auto`.

`auto` (the reference profile's choice) is vLLM, as the reference predicts, when vLLM's own environment is built here
(`make vllm-env`: vLLM runs as a child process under .venv-vllm, docs/vllm.md), and the transformers backend
otherwise, with a note saying why. The choice is a pure function of the setting and of what the environment check
reported, so it is tested without vLLM; only `vllm_env_problem` touches the machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evisrag_core.config import PredictParams
    from evisrag_core.predict import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # transformers | vllm
    note: str | None  # why `auto` chose it, for the log; None when the setting named the backend


def vllm_env_problem() -> str | None:
    """None when vLLM's environment is built (its python exists: .venv-vllm or $EVISRAG_VLLM_PYTHON); else why not,
    in one line. Whether the engine then starts is the engine's to report, with its own message."""
    from evisrag_core.vllm_engine.client import vllm_python_path

    path = vllm_python_path()
    return None if path.exists() else f"{path} not found; `make vllm-env` builds it"


def choose_backend(setting: str, vllm_problem: str | None) -> BackendChoice:
    """The backend for `predict.backend` = `setting`, given `vllm_problem` (None: vLLM's environment is built). Only
    `auto` looks at the problem: `vllm` named outright fails later with install instructions when vLLM is missing."""
    if setting != "auto":
        return BackendChoice(setting, None)
    if vllm_problem is None:
        return BackendChoice(
            "vllm", "predict.backend auto: vLLM's environment is built here, so prediction runs on vLLM"
        )
    return BackendChoice(
        "transformers",
        f"predict.backend auto: no vLLM environment here ({vllm_problem}); predicting with the transformers backend "
        "instead (same prompts and settings, other kernels: a few greedy outputs can differ from a vLLM run). "
        "Run `make vllm-env` to predict as the reference does",
    )


def backend_here(setting: str) -> BackendChoice:
    """`choose_backend` on this machine: vLLM's environment is looked for only for `auto`."""
    return choose_backend(setting, vllm_env_problem() if setting == "auto" else None)


def resolve_backend(setting: str) -> str:
    """The backend name for `setting` on this machine; the note is logged, a fallback as a warning."""
    choice = backend_here(setting)
    if choice.note:
        (log.info if choice.name == "vllm" else log.warning)(choice.note)
    return choice.name


def describe_backend(setting: str) -> str:
    """One line for `evisrag predict --dry-run`: the backend `setting` runs on this machine, and why."""
    choice = backend_here(setting)
    return f"backend on this machine: {choice.name}" + (f" ({choice.note})" if choice.note else "")


def make_backend(params: PredictParams, model: str | Path, trust_remote_code: bool, local_only: bool = True) -> Backend:
    """The generation backend `params.backend` names on this machine, over `model` (a folder; with `local_only`
    False also a hub id), with the predict settings: what `evisrag predict` and `evisrag answer` generate with."""
    from evisrag_core import predict as core  # torch and transformers: only when a backend is built
    from evisrag_core.modeling import load_model_and_processor, require_local_model_dir

    decoding, pixels = core.Decoding.from_params(params), (params.min_pixels, params.max_pixels)
    core.set_cpu_threads()
    if local_only:
        require_local_model_dir(Path(model), "evisrag model / evisrag sft")
    if resolve_backend(params.backend) == "vllm":
        from transformers import AutoProcessor

        if params.vllm_base_url:
            log.info("predict.vllm_base_url is set: the model served there answers; %s gives the processor", model)

        from evisrag_core.vllm_engine.backend import VllmBackend

        processor = AutoProcessor.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        return VllmBackend(
            str(model),
            processor,
            decoding,
            params.prompt_template,
            pixels,
            params.max_images_per_prompt,
            params.vllm_base_url,
            method=params.method,
        )
    loaded, processor = load_model_and_processor(model, trust_remote_code=trust_remote_code)
    return core.TransformersBackend(loaded, processor, decoding, params.prompt_template, pixels, params.method)
