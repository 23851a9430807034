# Entry points. Every stage is `python -m pipeline <stage> --config $(CONFIG) [key=value ...]`.
#   make train                        the default offline job (Fashion-MNIST + Lite0 ImageNet)
#   make train DATA=~/photos          your own folder: one sub-folder per class
#   make train CONFIG=configs/flowers.yaml   tfds + ResNet50 ImageNet (needs a network)
#   make search                       random search of the head's hyperparameters on dev
#   make test                         the test suite CI runs
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ifdef DATA
CONFIG ?= configs/folder.yaml
RUN_ARGS := data.source=folder data.path=$(DATA) name=$(notdir $(abspath $(DATA)))
else
CONFIG ?= configs/default.yaml
endif
PIPELINE := $(PY) -m pipeline --config $(CONFIG) $(RUN_ARGS) $(ARGS)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The default job reads Fashion-MNIST from Debian's package.
DATA_DEPS := $(if $(and $(filter configs/default.yaml,$(CONFIG)),$(if $(DATA),,yes)),$(FASHION_MNIST))

.PHONY: install data preview train evaluate export predict backbones search test test-slow bench lint clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,offline-weights]"
	touch $@

$(FASHION_MNIST):
	@echo "Installing Debian's dataset-fashion-mnist (the real Fashion-MNIST files)..."
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: install $(DATA_DEPS)
	$(PIPELINE) data
preview: install $(DATA_DEPS)
	$(PIPELINE) data && $(PIPELINE) preview
train: install $(DATA_DEPS)
	$(PIPELINE) all
evaluate: install
	$(PIPELINE) evaluate
export: install
	$(PIPELINE) export
predict: install
	$(PIPELINE) predict --images "$(IMAGES)"
backbones: install
	$(PIPELINE) backbones
search: install $(DATA_DEPS)
	$(PIPELINE) search

test: install
	$(PY) -m pytest -q
test-slow: install $(FASHION_MNIST)
	$(PY) -m pytest -q -m slow
bench: install
	$(PY) -m bench
lint: install
	$(VENV)/bin/ruff check pipeline tests bench

clean:
	rm -rf runs
