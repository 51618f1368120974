"""The messages between the pipeline (client.py) and the vLLM engine process (server.py); stdlib only.

Transport: `multiprocessing.connection.Connection` objects over the child's stdin (requests) and a duplicate of its
original stdout (replies); the server points its fd 1 at stderr so vLLM's own prints cannot corrupt the channel.
Messages are dicts of builtins, pickled by the connection. Images cross as raw RGB bytes (`pack_image`), not as
pickled PIL objects, so the two venvs' Pillow versions need not agree.

Requests (`op`):
    start          engine: dict of `vllm.LLM` keyword arguments          → seconds, versions
    generate       requests: [{prompt | prompt_token_ids, images}], sampling: [dict per request]
                   → outputs: [{samples: [{token_ids, text}], prompt_logprobs: [float | None] | None}]
    load_weights   path: a safetensors file with the transformers state-dict names → seconds
    close          → (the server exits)
Every reply has `ok`; a failed request replies ok=False with the server's traceback in `error`.
"""

from __future__ import annotations

from typing import Any

READY = "evisrag-vllm-engine-ready"  # the first reply, once vllm imported (before the engine is built)
PYTHON_ENV = "EVISRAG_VLLM_PYTHON"  # the interpreter of vLLM's venv; default <repo>/.venv-vllm/bin/python


def pack_image(image: Any) -> dict[str, Any]:
    """A PIL image as {mode, size, data}; the client has already converted and resized it (evisrag_core.images)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return {"mode": "RGB", "size": list(rgb.size), "data": rgb.tobytes()}


def unpack_image(packed: dict[str, Any]) -> Any:
    from PIL import Image

    return Image.frombytes(packed["mode"], tuple(packed["size"]), packed["data"])
