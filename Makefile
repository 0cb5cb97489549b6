# Two commands do all set-up on a fresh machine:
#   make demo   installs probe in .venv, trains a short default run, analyses it, writes its report
#   make test   installs probe with its test dependencies in .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local CIFAR-10 if there is one beside the checkout (or in $PROBE_DATA); else torchvision downloads it.
DATA ?= $(or $(PROBE_DATA),$(wildcard ../shared/data/cifar10))
DEMO_EPOCHS ?= 3
DEMO_RUN ?= runs/demo

.PHONY: install test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,dask]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check probe plugins tests bench examples

demo: install
	$(BIN)/probe train --run-dir $(DEMO_RUN) --epochs $(DEMO_EPOCHS) $(if $(DATA),--data $(DATA)) --force
	$(BIN)/probe analyze $(DEMO_RUN) --all --epochs 0,last
	-$(BIN)/probe report $(DEMO_RUN)

bench: install
	$(BIN)/python bench/bench_train.py $(if $(DATA),--data $(DATA))

clean:
	rm -rf $(VENV) runs sweeps
