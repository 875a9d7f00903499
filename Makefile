# make demo: create .venv, install, run the AN4 recipe end to end on the embedded slice, print the results table.
# make test: create .venv, install, run the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
EXP    ?= exp/an4_slice

.PHONY: venv demo test clean k2

$(BIN)/asr-distill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this version lies on local disk as a CPU build; a bare `torch` would pull CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/asr-distill

# The slice has ~4 minutes of training audio: small teachers keep the demo to a few CPU minutes.
DEMO_MODEL = --hidden-dim 256 --num-layers 3 --left-context 5 --right-context 5 --dropout 0.1 --epochs 8 --batch-size 128
# One seed per system: the demo shows the pipeline (the recipes' default, 3 seeds, is for results on real corpora).
DEMO_DISTILL = -T 5 --alpha 0.5 --seeds 1

demo: venv
	VIRTUAL_ENV=$(abspath $(VENV)) PATH="$(abspath $(BIN)):$$PATH" recipes/an4/run.sh --corpus-dir corpora/an4_slice --exp-dir $(EXP) --stage 0 --stop-stage 7 \
		--num-teachers 3 --teacher-args "$(DEMO_MODEL)" --distill-args "$(DEMO_DISTILL)"

test: venv
	$(BIN)/python -m pytest -q tests

# optional: k2 (the --decoder k2 backend, sequence-level distillation), built offline from ../shared/vendor/k2
k2: venv
	PYTHON=$(BIN)/python tools/build_k2.sh

clean:
	rm -rf $(VENV) exp
