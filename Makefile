# GroupPose-D2 developer entry points. `make setup` is idempotent: each step leaves a stamp in
# .venv/ and reruns only when its inputs change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
CSRC := $(wildcard projects/GroupPose/grouppose/layers/csrc/*)

.PHONY: setup test test-all lint clean help demo

help:
	@echo "make setup     create .venv with torch, detectron2 and grouppose (idempotent)"
	@echo "make test      setup, lint, then the fast test suite"
	@echo "make test-all  setup, then every test including the slow ones"
	@echo "make demo      train a tiny model from scratch on generated data (CPU, minutes)"

setup: $(STAMPS)/grouppose

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/torch: | $(PY)
	$(PIP) install --quiet --upgrade "pip>=23.1" "setuptools>=64" wheel
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/detectron2: $(STAMPS)/torch tools/install_detectron2.py
	$(PY) tools/install_detectron2.py
	@touch $@

# xtcocotools (CrowdPose evaluation): its PyPI wheel is built against numpy 1 and fails under
# numpy 2, so it is compiled from source against the installed numpy.
$(STAMPS)/xtcocotools: $(STAMPS)/detectron2
	$(PIP) install --quiet cython
	$(PIP) install --quiet --no-build-isolation --no-binary xtcocotools xtcocotools
	@touch $@

# Editable install; rebuilds the compiled op (grouppose._C) when its sources change.
$(STAMPS)/grouppose: $(STAMPS)/detectron2 $(STAMPS)/xtcocotools setup.py $(CSRC)
	$(PIP) install --quiet --no-build-isolation -e ".[test]"
	@touch $@

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

clean:
	rm -rf build projects/GroupPose/grouppose/*.so projects/GroupPose/*.egg-info

# Train configs/Synthetic/grouppose_tiny.yaml from scratch on the CPU for a few minutes on the
# generated dataset (created under datasets/synthetic_pose_small/ on first use), print the
# keypoint AP table on the held-out split and draw predictions to output/demo/predictions/.
demo: setup
	$(PY) tools/benchmarks/learn_synthetic.py --output-dir output/demo --max-iter 300 \
		--eval-period 300 --draw 4
