# Entry points. Every stage is `python -m pipeline <stage> --config $(CONFIG) [key=value ...]`.
#   make train                        the default offline job (Fashion-MNIST + Lite0 ImageNet)
#   make train DATA=~/photos          your own folder: one sub-folder per class
#   make train CONFIG=configs/flowers.yaml   tfds + ResNet50 ImageNet (needs a network)
#   make train ARGS="train.head_epochs=5"    any config override, any target
#   make predict IMAGES=new/          classify files or folders with the exported model
#   make demo MODEL=models/<run>      a local web page that classifies a dropped photo
#   make search                       coarse-to-fine random search of hyperparameters on dev
#   make lr-find                      learning-rate finder: the head's loss against its rate
#   make test                         the test suite CI runs
#   make test-faults                  kills, damages and starves real runs; prints a scoreboard
#   make test-distributed             two workers on 127.0.0.1: training and search (issue 17)
# TEST_ARGS is appended after ARGS; the README test sets it (in the environment) to keep the
# README's commands, run exactly as written, to seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ifdef DATA
CONFIG ?= configs/folder.yaml
# The run and the export are named after the folder (quoted: paths may hold spaces).
RUN_ARGS := data.source=folder "data.path=$(DATA)" "name=$$(basename "$$(realpath -m "$(DATA)")")"
else
CONFIG ?= configs/default.yaml
endif
# $(call pipeline,STAGE): the stage first, then the config and every override.
pipeline = $(PY) -m pipeline $(1) --config "$(CONFIG)" $(RUN_ARGS) $(ARGS) $(TEST_ARGS)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The default job reads Fashion-MNIST from Debian's package.
DATA_DEPS := $(if $(and $(filter configs/default.yaml,$(CONFIG)),$(if $(DATA),,yes)),$(FASHION_MNIST))

.PHONY: install data preview train evaluate export predict demo backbones search lr-find test test-slow test-faults test-distributed bench lint clean
install: $(VENV)/.installed

# mediapipe: its TFLite metadata writer puts the labels inside model.tflite. Installed without
# its declared dependencies (they pin protobuf<5 and numpy<2, which TensorFlow 2.21 cannot use;
# the writer needs only flatbuffers); newer mediapipe wheels lack the writer's native module.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,offline-weights]"
	$(VENV)/bin/pip install --quiet --no-deps mediapipe==0.10.21
	touch $@

$(FASHION_MNIST):
	@echo "Installing Debian's dataset-fashion-mnist (the real Fashion-MNIST files)..."
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Headless Chromium renders report.html and drives make demo's page in the tests.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "Installing Debian's chromium (the browser tests of report.html and make demo)..."
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium

data: install $(DATA_DEPS)
	$(call pipeline,data)
preview: install $(DATA_DEPS)
	$(call pipeline,data) && $(call pipeline,preview)
train: install $(DATA_DEPS)
	$(call pipeline,all)
evaluate: install
	$(call pipeline,evaluate)
export: install
	$(call pipeline,export)
# MODEL= names an export (default: models/<run name>); IMAGES= a file or folder; more paths and
# options (--top-k 5 --format json) go in ARGS.
MODEL_ARG = $(if $(MODEL),--model "$(MODEL)")
predict: install
	$(call pipeline,predict) $(MODEL_ARG) $(if $(IMAGES),--images "$(IMAGES)")
demo: install
	$(call pipeline,demo) $(MODEL_ARG) $(if $(PORT),--port $(PORT))
backbones: install
	$(call pipeline,backbones)
search: install $(DATA_DEPS)
	$(call pipeline,search)
lr-find: install $(DATA_DEPS)
	$(call pipeline,lr-find)

test: install $(FASHION_MNIST) $(CHROMIUM)
	$(PY) -m pytest -q --durations=15
test-e2e: install $(FASHION_MNIST)
	$(PY) -m pytest -q -m e2e --durations=10
test-slow: install $(FASHION_MNIST)
	$(PY) -m pytest -q -m slow
test-faults: install
	$(PY) -m pytest -q -m faults tests/test_faults.py
test-distributed: install $(FASHION_MNIST)
	$(PY) -m pytest -q -m distributed tests/test_distribute.py
bench: install
	$(PY) -m bench
lint: install
	$(VENV)/bin/ruff check pipeline tests bench

clean:
	rm -rf runs
