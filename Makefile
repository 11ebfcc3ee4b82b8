# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench benchmarks clean

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
	$(BIN)/python -m pytest -q --durations=10

# Every speed figure against a baseline timed in the same run, with its target (4.5 min on cpu-2c);
# the figures go into benchmarks/RESULTS.md. MACHINE names this machine there.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(if $(MACHINE),--machine "$(MACHINE)")

benchmarks: bench

clean:
	rm -rf runs
