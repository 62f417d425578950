# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python ships as source only: its wheel is built once (4-5 minutes on 2 cores) into a
# cache and reused by every later install on the machine. It is built for the CPU's vector
# extensions rather than with -march=native, which on this machine's CPU also enables AMX, and
# ggml's AMX kernels crash here. AVX512 with VNNI (where the CPU has it) prefills about 1.3x faster
# than AVX2 alone and decodes three sequences at once at 2.1x one (1.75x with AVX2).
LLAMA_CPP := llama-cpp-python==0.3.36
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMA_V3 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
ifneq ($(and $(findstring avx512_vnni,$(CPU_FLAGS)),$(findstring avx512_bf16,$(CPU_FLAGS)),$(findstring avx512vbmi,$(CPU_FLAGS)),$(findstring avx_vnni,$(CPU_FLAGS))),)
LLAMA_VARIANT := x86-64-avx512
LLAMA_CMAKE_ARGS := $(LLAMA_V3) -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
else
LLAMA_VARIANT := x86-64-v3
LLAMA_CMAKE_ARGS := $(LLAMA_V3)
endif
WHEELS ?= $(HOME)/.cache/batos/wheels-$(LLAMA_VARIANT)

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

# Two workers: most tests wait on servers and subprocesses; tests/conftest.py schedules them (a file
# stays on one worker; every file with a real model on the same one).
test: install
	$(BIN)/python -m pytest -n 2 --dist loadscope

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadscope -m "not slow"

bench: install
	$(BIN)/python bench/kernel.py
	$(BIN)/python bench/awaken.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/synthesis.py
	$(BIN)/python bench/mind.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
