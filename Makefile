# shoprank: training/ → conversion/ → model_repository/ → client/ → loadtest/
#
#   make demo    everything end to end on the embedded defaults (venv, data, train,
#                convert, Triton repository, server, a search, a load test, summary)
#   make test    the test suite (make test-fast: without the slow end-to-end tests)
#
# Variables: OUT (artifact folder), SCALE (tiny|demo|full), TARGET (cpu|gpu|gpu-embedded),
# USERS / RUN_TIME / WORKERS / LOADTEST_ARGS (load test, e.g. --user-rps 12.5 --retries 0;
# WORKERS=N: Locust master + N worker processes),
# NPROC (fine-tuning processes under torchrun, e.g. NPROC=2),
# TRAIN_ARGS (extra flags for `python -m shoprank.training`),
# DEMO_TRAIN_ARGS (the demo's lighter training setting),
# INDEX_ARGS (catalog job, e.g. --workers 2; RAY_ADDRESS=<head>:6379 runs it on that cluster),
# REPO_ARGS (e.g. --max-in-flight 16), SERVE_ARGS (e.g. --host 0.0.0.0 --tls-cert ...),
# NEW (artifacts `make deploy` puts live), DATA / RECOMMEND_ARGS (make recommend: your
# interactions and extra flags for `python -m shoprank.training.recommend`).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= artifacts/demo
SCALE ?= demo
TARGET ?= cpu
USERS ?= 8
RUN_TIME ?= 30s
WORKERS ?= 0
NPROC ?= 1
TRAIN_ARGS ?=
# `make demo` trains a little less than `make train`, to fit its budget on 2 cores: 150
# fine-tuning steps of 200 and no validation passes meanwhile (the demo's validation
# NDCG@10 at steps 50/100/150/200: 0.770, 0.792, 0.800, 0.812), the sequential model's
# first 2 epochs, and one fusion variant beside relevance alone. `make train` / `make
# eval` keep the full setting.
DEMO_TRAIN_ARGS ?= --max-steps 150 --eval-steps 150 --seq-epochs 2 --fusions target_attention
BENCH_ARGS ?=
INDEX_ARGS ?=
REPO_ARGS ?=
LOADTEST_ARGS ?=
SERVE_ARGS ?=
DEPLOY_ARGS ?=
NEW ?= $(OUT)
PIDFILE := $(OUT)/tritonserver.pid
# This machine keeps the CPU build of torch 2.13.0 as a local wheel; use it when present.
PIP_FIND := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
# The extras `make venv` installs: on a GPU host (nvidia-smi found) also `gpu` (TensorRT,
# onnxruntime-gpu), so the TensorRT tests run where engines can be built.
comma := ,
EXTRAS ?= dev$(if $(shell command -v nvidia-smi 2>/dev/null),$(comma)gpu,)

.PHONY: help venv data train eval evaluate crossval convert index repo workload serve deploy rollback stop search loadtest \
        demo summary recommend bench bench-scale profile bench-deploy bench-ann benchmarks-doc gpu-check test test-fast lint serve-gpu clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FIND) -e ./client -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed ## create .venv, install shoprank and ./client (+ the gpu extra where nvidia-smi is found)

data: venv ## generate the synthetic shop (SCALE=tiny|demo|full)
	$(PY) -m shoprank.training.synthetic --scale $(SCALE) --out $(OUT)

train: venv ## fine-tune the encoder, train the fusion ranker, write metrics.json
	$(PY) -m shoprank.training --out $(OUT) --scale $(SCALE) --nproc $(NPROC) $(TRAIN_ARGS)

eval: venv ## train, convert, build the repository, then baselines + the served pipeline + report
	$(MAKE) train convert repo
	$(PY) -m shoprank.training.evaluate --out $(OUT)

evaluate: venv ## baselines, the served pipeline and the report for an existing run
	$(PY) -m shoprank.training.evaluate --out $(OUT)

crossval: venv ## query-grouped k-fold on your own data: make crossval DATA=file.csv
	$(PY) -m shoprank.training.crossval --data $(DATA) --folds 5 --out $(OUT)/crossval

convert: venv ## ONNX export, parity check, int8 quantization, conversion report
	$(PY) -m shoprank.conversion --out $(OUT)

index: venv ## the catalog job on Ray: embed the catalog, dense + lexical indexes (INDEX_ARGS, RAY_ADDRESS)
	$(PY) -m shoprank.conversion.catalog_job --out $(OUT) $(INDEX_ARGS)

repo: venv ## generate the Triton model repository (TARGET=cpu|gpu|gpu-embedded)
	$(PY) -m shoprank.model_repository.build --out $(OUT) --target $(TARGET) $(REPO_ARGS)

serve: venv ## start the supervised Triton server on localhost (gRPC 8001, HTTP 8000, metrics 8002, health 8003)
	$(PY) -m shoprank.model_repository.server start --repository $(OUT)/repository_cpu --pidfile $(PIDFILE) --log $(OUT)/tritonserver.log $(SERVE_ARGS)

deploy: venv ## hot-deploy the artifacts of NEW (default OUT) as the next version of the served repository
	$(PY) -m shoprank.model_repository.deploy --out $(NEW) --repository $(OUT)/repository_cpu $(DEPLOY_ARGS)

rollback: venv ## put the previously served version back, without downtime
	$(PY) -m shoprank.model_repository.deploy --rollback --repository $(OUT)/repository_cpu $(DEPLOY_ARGS)

stop: ## stop the embedded Triton server
	@if [ -x $(PY) ]; then $(PY) -m shoprank.model_repository.server stop --pidfile $(PIDFILE); fi

search: venv ## searches, a filtered and explained one, and a recommendation through the client CLI
	$(PY) -m shoprank_client search "red leather sofa" --top-k 5
	$(PY) -m shoprank_client search "running shoes" --history "$$(cat $(OUT)/loadtest/example_history.txt)" --top-k 5
	$(PY) -m shoprank_client search "running shoes" --history "$$(cat $(OUT)/loadtest/example_history.txt)" --top-k 3 --price-max 80 --in-stock --explain
	$(PY) -m shoprank_client recommend --history "$$(cat $(OUT)/loadtest/example_history.txt)" --top-k 5

workload: venv ## realistic (query, history) requests from the held-out sessions
	$(PY) -m shoprank.loadtest.workload --out $(OUT)

loadtest: venv ## Locust against the gRPC endpoint (USERS, RUN_TIME, WORKERS); prints p50/p95/p99
	$(PY) -m shoprank.loadtest.run --users $(USERS) --spawn-rate $(USERS) --run-time $(RUN_TIME) --workers $(WORKERS) --out $(OUT)/loadtest --workload $(OUT)/loadtest/workload.json $(LOADTEST_ARGS)

summary: venv ## print the demo summary from the artifacts
	$(PY) -m shoprank.ops.summary --out $(OUT)

demo: venv ## the whole product end to end on the embedded defaults
	$(MAKE) train TRAIN_ARGS="$(DEMO_TRAIN_ARGS) $(TRAIN_ARGS)"
	$(MAKE) convert repo workload
	$(MAKE) stop
	$(MAKE) serve
	trap '$(MAKE) stop' EXIT; $(MAKE) search loadtest summary

recommend: venv ## recommend mode on your interactions: make recommend DATA=<file or folder> [RECOMMEND_ARGS=...]
	$(PY) -m shoprank.training.recommend --data $(DATA) --out $(OUT) $(RECOMMEND_ARGS)

bench: venv ## naive PyTorch/HTTP vs ONNX Runtime vs Triton, p50/p95/p99 + ratios: OUT/reports/bench.{md,csv}
	$(PY) -m shoprank.bench --out $(OUT) --reports $(OUT)/reports $(BENCH_ARGS)

bench-scale: venv ## Triton at 20k/200k/1M products, exact scan vs ANN: OUT/reports/scale.{csv,png}
	$(PY) -m shoprank.bench.scale --out $(OUT) $(BENCH_ARGS)

profile: venv ## py-spy on the loaded server's stubs: where their time goes, OUT/reports/profile.md
	$(PY) -m shoprank.bench.profile --out $(OUT) --reports $(OUT)/reports $(BENCH_ARGS)

bench-deploy: venv ## hot deploy + rollback under 8 Locust users: OUT/reports/deploy.{json,png}
	$(PY) -m shoprank.bench.deploy --out $(OUT) $(BENCH_ARGS)

gpu-check: venv ## on a GPU host: serve the gpu-embedded target, agreement + concurrency sweep -> docs/gpu/
	$(PY) -m shoprank.bench.gpu_check --out $(OUT) $(GPU_CHECK_ARGS)

bench-ann: venv ## ANN libraries and indexes compared on this machine: OUT/reports/ann.{md,csv}
	$(PY) -m shoprank.bench.ann --out $(OUT) --reports $(OUT)/reports $(BENCH_ARGS)

benchmarks-doc: venv ## the benchmark outputs found below OUT into their sections of docs/benchmarks.md
	$(PY) -m shoprank.bench.benchmarks_doc --out $(OUT) --doc docs/benchmarks.md

test: venv ## run the whole test suite (what CI runs)
	$(PY) -m pytest -q

test-fast: venv ## the test suite without the slow end-to-end tests (marked `slow`)
	$(PY) -m pytest -q -m "not slow"

lint: venv ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

serve-gpu: ## on a GPU host: serve the gpu repository in NVIDIA's Triton container
	$(MAKE) repo TARGET=gpu
	docker run --gpus=all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
	  -v $(CURDIR):/workspace/shoprank -w /workspace/shoprank \
	  nvcr.io/nvidia/tritonserver:24.10-py3 bash -c \
	  "pip install --quiet --no-deps -e ./client -e . && pip install --quiet tokenizers 'numpy<2' onnxruntime-gpu && \
	   tritonserver --model-repository=$(OUT)/repository_gpu"

# The tag of `make image`: the project's version in pyproject.toml.
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: image
image: ## build the CPU serving image shoprank:VERSION (needs a Docker engine; docs/kubernetes.md)
	docker build -f deploy/Dockerfile -t shoprank:$(VERSION) .

clean: stop ## remove the artifacts of OUT
	rm -rf $(OUT)
