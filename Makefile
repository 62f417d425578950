# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python ships as source only: its wheel is built once (about 4 minutes on 2 cores) into
# this cache and reused by every later install on the machine. It is built for x86-64-v3 (AVX2, FMA,
# F16C) rather than -march=native: on this machine's CPU native builds use AMX, which crashes here.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
WHEELS ?= $(HOME)/.cache/batos/wheels-x86-64-v3

.PHONY: install run test test-fast bench clean

install: $(STAMP)

# requirements.lock pins every package (torch==2.13.0 is the CPU build this machine keeps on disk).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir -w $(WHEELS) $(LLAMA_CPP)
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/batos run

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/kernel.py
	$(BIN)/python bench/awaken.py
	$(BIN)/python bench/synthesis.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
