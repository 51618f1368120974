"""The pipeline's side of the vLLM engine process (protocol.py): start it under .venv-vllm, talk to it, stop it.

`VllmUnavailable` (exit 2 from the CLI) says how to build the environment when its interpreter is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from evisrag_core.errors import UserError
from evisrag_core.vllm_engine import protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class VllmUnavailable(UserError, FileNotFoundError):
    """vLLM's environment is missing or broken; the message says how to build it. A user error: the CLI prints it and
    exits 2 (evisrag_core/errors.py)."""


class EngineError(RuntimeError):
    """The engine process failed a request (its traceback is in the message)."""


def vllm_python_path() -> Path:
    """The interpreter of vLLM's venv: $EVISRAG_VLLM_PYTHON, else .venv-vllm/bin/python in this checkout."""
    return Path(os.environ.get(protocol.PYTHON_ENV) or DEFAULT_PYTHON)


def vllm_python() -> Path:
    """`vllm_python_path()`, which must exist."""
    path = vllm_python_path()
    if not path.exists():
        raise VllmUnavailable(
            f"vLLM's environment is not built ({path} not found): run `make vllm-env` (or set {protocol.PYTHON_ENV} "
            "to the python of a venv with vLLM); docs/vllm.md"
        )
    return path


def device_dtype() -> str:
    """fp32 on CPU (vLLM's CPU backend and the policy compare in fp32), bf16 on a GPU (what the reference runs)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


class EngineProcess:
    """One `vllm.LLM` in a child process under vLLM's venv. Use as a context manager, or call `close()`."""

    def __init__(self, engine_args: dict[str, Any], python: Path | None = None, start_timeout: float = 900.0):
        python = python or vllm_python()
        model = Path(str(engine_args.get("model", "")))
        if model.exists():  # a local folder: vLLM would take a relative path it cannot find for a hub id
            engine_args = {**engine_args, "model": str(model.resolve())}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        started = time.perf_counter()
        # stdin carries requests, stdout replies; stderr (vLLM's logs) is inherited so a user sees the engine start.
        self.process = subprocess.Popen(
            [str(python), "-m", "evisrag_core.vllm_engine.server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,  # the caller's working directory: relative paths in requests mean what they mean to it
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self._replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        try:
            ready = self._receive(start_timeout, "import vllm")
            if ready.get("ready") != protocol.READY:
                raise VllmUnavailable(f"{python} did not start the engine server: {ready}")
            reply = self._call({"op": "start", "engine": engine_args}, start_timeout)
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)  # an engine left open ends with the pipeline, not after it
        self.versions: dict[str, str] = reply["versions"]
        self.start_seconds = time.perf_counter() - started  # process start + import + engine build

    def _receive(self, timeout: float | None, what: str) -> dict[str, Any]:
        if timeout is not None and not self._replies.poll(timeout):
            raise EngineError(f"the vLLM engine process did not answer {what} within {timeout:.0f} s")
        try:
            reply = self._replies.recv()
        except EOFError as err:
            code = self.process.wait()
            raise EngineError(f"the vLLM engine process exited (code {code}) during {what}; its log is above") from err
        if not reply.get("ok"):
            error = reply.get("error", "")
            if what == "import vllm":
                raise VllmUnavailable(f"vLLM does not import in its environment; run `make vllm-env`.\n{error}")
            raise EngineError(f"the vLLM engine failed {what}:\n{error}")
        return reply

    def _call(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self._requests.send(message)
        return self._receive(timeout, message["op"])

    def generate(
        self, requests: Sequence[dict[str, Any]], sampling: Sequence[dict[str, Any]] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        """All requests in one engine call. A request: {prompt | prompt_token_ids, images: [PIL images]}; sampling:
        `vllm.SamplingParams` keyword arguments, one dict for all or one per request."""
        options = [sampling] * len(requests) if isinstance(sampling, dict) else list(sampling)
        packed = [{**r, "images": [protocol.pack_image(i) for i in r.get("images") or []]} for r in requests]
        return self._call({"op": "generate", "requests": packed, "sampling": options})["outputs"]

    def load_weights(self, state_dict: dict[str, Any]) -> float:
        """Push a transformers state dict into the engine (through a safetensors file in a temporary folder, in
        memory under /dev/shm when there is one); returns the seconds the whole sync took."""
        from safetensors.torch import save_file

        started = time.perf_counter()
        shm = Path("/dev/shm")
        with tempfile.TemporaryDirectory(prefix="evisrag-weights-", dir=shm if shm.is_dir() else None) as tmp:
            path = Path(tmp) / "model.safetensors"
            # clone: tied weights share storage, which safetensors refuses to save twice
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}, str(path))
            self._call({"op": "load_weights", "path": str(path)})
        return time.perf_counter() - started

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.process.poll() is None:
            # an engine that already failed or hangs cannot say goodbye: it is waited for, then killed, below
            with contextlib.suppress(EngineError, OSError):
                self._call({"op": "close"}, timeout=30)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for connection in (self._requests, self._replies):
            connection.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
