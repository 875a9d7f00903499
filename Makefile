# make demo: create .venv, install, run the AN4 recipe end to end on the embedded slice, print the results table.
# make test: create .venv, install, run the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
EXP    ?= exp/an4_slice

.PHONY: venv demo test clean

$(BIN)/asr-distill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this version lies on local disk as a CPU build; a bare `torch` would pull CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/asr-distill

demo: venv
	recipes/an4/run.sh --corpus-dir corpora/an4_slice --exp-dir $(EXP) --stage 0 --stop-stage 7

test: venv
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) exp
