#!/usr/bin/env bash
# The released EVisRAG checkpoints on the five test sets, predicted as the reference predicts (predict.profile:
# reference) and scored by our evaluation (the reference's metrics): one table, a row per benchmark, which the paper
# does not publish per checkpoint.
#
#   download   openbmb/EVisRAG-Test-{ChartQA,InfoVQA,SlideVQA,DocVQA,ViDoSeek} (or a local snapshot: --data-dir)
#   model      openbmb/EVisRAG-7B or -3B (or a local model folder: --model-dir, used in place)
#   predict    predict.profile reference: vLLM when it imports, 2,048 new tokens, temperature 0, repetition
#              penalty 1.05, pixels 3,136 … 12,845,056, one question per generate call
#   evaluate   EM / Accuracy / F1 per benchmark, then the table (`evisrag metrics`)
#
# usage: scripts/reproduce_released.sh [--size 7b|3b] [--out DIR] [--model-dir DIR] [--data-dir DIR]
#                                      [--benchmarks A,B] [--set KEY=VALUE ...] [--cpu] [--dry-run]
#   --size        which released checkpoint (default 7b)
#   --out         everything this run writes: params.yaml, data/, model/, preds/, metrics.json, table.txt
#                 (default artifacts/reproduce/EVisRAG-<SIZE>)
#   --model-dir   a local model folder instead of the hub download (env REPRODUCE_MODEL_DIR)
#   --data-dir    a local folder with EVisRAG-Test-<Name>/ snapshots instead of the hub (env REPRODUCE_DATA_DIR)
#   --benchmarks  comma-separated subset of the five (default all)
#   --set         a params override on top (repeatable), e.g. --set predict.batch_size=16 (keys you set win over
#                 the profile)
#   --cpu         run even without a CUDA GPU (a 7B model on CPU takes days: for tiny models and tests)
#   --dry-run     write the params file, print the predict settings and the commands, run nothing
#
# Every stage is an `evisrag` command with the generated params file (Prefect flow run, MLflow run in
# tracking.experiment_name reproduce-released). A rerun resumes predictions where they stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/evisrag ]] && export PATH="$PWD/.venv/bin:$PATH"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

size=7b out="" model_dir="${REPRODUCE_MODEL_DIR:-}" data_dir="${REPRODUCE_DATA_DIR:-}"
benchmarks="ChartQA,InfoVQA,SlideVQA,DocVQA,ViDoSeek" cpu=false dry_run=false
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size) size="${2:-}"; shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    --model-dir) model_dir="${2:-}"; shift 2 ;;
    --data-dir) data_dir="${2:-}"; shift 2 ;;
    --benchmarks) benchmarks="${2:-}"; shift 2 ;;
    --set) overrides+=("${2:-}"); shift 2 ;;
    --cpu) cpu=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$size" in
  7b|7B) hub_model=openbmb/EVisRAG-7B ;;
  3b|3B) hub_model=openbmb/EVisRAG-3B ;;
  *) die "--size must be 7b or 3b, not '$size'" ;;
esac
out="${out:-artifacts/reproduce/EVisRAG-${size^^}}"
[[ -z "$model_dir" || -d "$model_dir" ]] || die "--model-dir $model_dir is not a folder"
[[ -z "$data_dir" || -d "$data_dir" ]] || die "--data-dir $data_dir is not a folder"
python="$(command -v python || command -v python3)"

if ! $cpu && ! $dry_run && ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  die "no CUDA GPU here: EVisRAG-${size^^} needs one (pass --cpu to run anyway, e.g. with a tiny --model-dir)"
fi

mkdir -p "$out"
params="$out/params.yaml"
# The repository's params.yaml with this run's data, model, outputs and the reference profile; --set on top.
"$python" - "$params" "$out" "$hub_model" "$model_dir" "$data_dir" "$benchmarks" "${overrides[@]}" <<'PY'
import sys
from pathlib import Path

import yaml

from evisrag_core.config import parse_params

path, out, hub_model, model_dir, data_dir, benchmarks, *overrides = sys.argv[1:]
out = Path(out)
raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
raw["data"].update(
    source="local" if data_dir else "hub",
    local_dir=str(Path(data_dir).resolve()) if data_dir else None,
    out_dir=str(out / "data"),
    benchmarks=benchmarks.split(","),
    include_train=False,
)
raw["model"].update(source="hub", name_or_path=hub_model, out_dir=str(out / "model"))
raw["predict"].update(
    profile="reference",
    model_dir=str(Path(model_dir).resolve()) if model_dir else str(out / "model"),
    out_dir=str(out / "preds"),
)
raw["evaluate"].update(metrics_file=str(out / "metrics.json"), per_question_file=str(out / "eval/per_question.jsonl"))
raw["tracking"].update(experiment_name="reproduce-released", tags={"released": hub_model.split("/")[-1]})
for override in overrides:
    key, sep, value = override.partition("=")
    if not sep:
        sys.exit(f"error: --set {override!r}: expected KEY=VALUE")
    *sections, leaf = key.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = yaml.safe_load(value)
parse_params(raw, f"{path} (after --set)")  # a bad override stops here, before any stage runs
Path(path).write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
PY

stages=(download)
[[ -n "$model_dir" ]] || stages+=(model)  # a local model folder is used where it is
stages+=(predict evaluate)

if $dry_run; then
  evisrag --params "$params" predict --dry-run
  echo
  echo "would run:"
  for stage in "${stages[@]}" "metrics --file $out/metrics.json"; do echo "  evisrag --params $params $stage"; done
  exit 0
fi
for stage in "${stages[@]}"; do
  echo "=== evisrag --params $params $stage"
  evisrag --params "$params" "$stage"
done
echo "=== per-benchmark results (${model_dir:-$hub_model}, predict.profile reference): $out/table.txt"
evisrag --params "$params" metrics --file "$out/metrics.json" | tee "$out/table.txt"
