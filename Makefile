# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test benchmarks clean

install: $(STAMP)

# Reinstall when the dependencies change. On a CPU-only machine pip still takes a CUDA build of
# torch: torchaudio's wheel (imported by encodec) links against the CUDA runtime (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/narrator demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/tokenize_speed.py
	$(BIN)/python benchmarks/loader_speed.py

clean:
	rm -rf runs
