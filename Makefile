# Two commands for a newcomer: `make demo` (the whole pipeline) and `make test` (tests + lint).
# Every target creates the virtual environment .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
CORPUS ?=
PYTEST_ARGS ?=

.PHONY: help venv demo test test-all lint format bench data peers tensorboard clean

help:
	@echo "make demo [CORPUS=DIR]   whole pipeline end to end (data prep, STFT, train, evaluate, enhance)"
	@echo "make test                ruff and the tests not marked slow (no training runs, no whole scripts)"
	@echo "make test-all            ruff and every test (what CI runs)"
	@echo "make lint | format       ruff check / ruff format"
	@echo "make bench               benchmarks under bench/ (prints figures)"
	@echo "make data                download LibriSpeech and MS-SNSD noise into data/ (needs network)"
	@echo "make peers               install optional baselines (requirements-peers.txt)"
	@echo "make tensorboard         TensorBoard on logs/gradient_tape"
	@echo "make clean               remove pipeline outputs (keeps .venv and your audio)"

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/python demo.py $(if $(CORPUS),--corpus $(CORPUS))

test: venv lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

data: venv
	$(BIN)/python data/download.py

peers: venv
	$(BIN)/python -m pip install -r requirements-peers.txt

tensorboard: venv
	$(BIN)/tensorboard --logdir logs/gradient_tape

clean:
	rm -rf data/CleanSpeech_* data/Noise_* data/NoisySpeech_* data/manifest_*.csv data/data_prep_* \
	       data/demo_corpus Training_STFT Testing_STFT cp logs enhanced results
