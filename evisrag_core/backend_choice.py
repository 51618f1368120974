"""Which generation backend prediction uses: `predict.backend: transformers | vllm | auto`.

`auto` (the reference profile's choice) is vLLM, as the reference predicts, when `import vllm` works here, and the
transformers backend otherwise, with a note saying why. The choice is a pure function of the setting and of what the
import reported, so it is tested without vLLM; only `vllm_import_problem` touches the environment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # transformers | vllm
    note: str | None  # why `auto` chose it, for the log; None when the setting named the backend


def vllm_import_problem() -> str | None:
    """None when `import vllm` works; else what went wrong, in one line. A broken install (e.g. a vLLM build that
    does not match the installed torch) raises more than ImportError, and counts as not installed."""
    try:
        import vllm  # noqa: F401  (heavy: only `auto` asks)
    except Exception as err:  # any failure to import means vLLM cannot run here
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def choose_backend(setting: str, vllm_problem: str | None) -> BackendChoice:
    """The backend for `predict.backend` = `setting`, given `vllm_problem` (None: `import vllm` works). Only `auto`
    looks at the problem: `vllm` named outright fails later with install instructions when vLLM is missing."""
    if setting != "auto":
        return BackendChoice(setting, None)
    if vllm_problem is None:
        return BackendChoice("vllm", "predict.backend auto: vLLM imports here, so prediction runs on vLLM")
    return BackendChoice(
        "transformers",
        f"predict.backend auto: vLLM does not import here ({vllm_problem}); predicting with the transformers backend "
        "instead (same prompts and settings, other kernels: a few greedy outputs can differ from a vLLM run). "
        "Install vLLM on a GPU machine to predict as the reference does",
    )


def backend_here(setting: str) -> BackendChoice:
    """`choose_backend` on this machine: vLLM is imported only for `auto`."""
    return choose_backend(setting, vllm_import_problem() if setting == "auto" else None)


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
