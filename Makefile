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
# Loss-based analyses on 256 of the stored 1,024 images and a 15x15 grid, so the demo takes minutes on a laptop CPU
# (hessian: about 170 products of 256 images in all, per-layer blocks included; docs/curvature.md).
DEMO_ANALYZE ?= --param hessian.n_images=256 --param hessian.trace_samples=10 --param hessian.density_steps=20 \
	--param hessian.blocks=layer --param landscape.n_images=256 \
	--param landscape.resolution=15 --param sharpness.n_images=256 --param sharpness.steps=5 --param sharpness.samples=8 \
	--param sharpness.target_rel_stderr=0

.PHONY: install test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,dask,tsne,peers]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check probe plugins tests bench examples

demo: install
	$(BIN)/probe train --run-dir $(DEMO_RUN) --epochs $(DEMO_EPOCHS) $(if $(DATA),--data $(DATA)) --force
	$(BIN)/probe analyze $(DEMO_RUN) --all --epochs 0,last $(DEMO_ANALYZE)
	$(BIN)/probe report $(DEMO_RUN)

bench: install
	$(BIN)/python bench/bench_train.py $(if $(DATA),--data $(DATA))

clean:
	rm -rf $(VENV) runs sweeps
