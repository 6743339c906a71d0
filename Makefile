# GroupPose-D2 developer entry points. `make setup` is idempotent: each step leaves a stamp in
# .venv/ and reruns only when its inputs change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
CSRC := $(wildcard projects/GroupPose/grouppose/layers/csrc/*)
BUILD_TOOLS := "pip>=23.1" "setuptools>=64" wheel
TORCH := torch==2.14.1 torchvision==0.29.1

# Upstream Detectron2 main built from its source archive, in an environment of its own
# (`make test-upstream`): the suite then runs against Detectron2 as users who build it have it.
UPSTREAM_ARCHIVE ?= ../shared/vendor/detectron2-main-02b5c4e.tar.gz
UPSTREAM_MAX_JOBS ?= 2
UPSTREAM_VENV := .venv-upstream
UPSTREAM_PY := $(UPSTREAM_VENV)/bin/python
UPSTREAM_PIP := $(UPSTREAM_PY) -m pip --disable-pip-version-check
UPSTREAM_STAMPS := $(UPSTREAM_VENV)/.stamps
UPSTREAM_SRC := build/detectron2-upstream

.PHONY: setup test test-all lint clean help demo upstream-archive upstream-setup test-upstream \
	browser-test-deps

help:
	@echo "make setup     create .venv with torch, detectron2 and grouppose (idempotent)"
	@echo "make test      setup, lint, then the fast test suite"
	@echo "make test-all  setup, then every test including the slow ones"
	@echo "make browser-test-deps  Selenium, Chromium and its driver for the browser demo's test"
	@echo "make test-upstream  build upstream Detectron2 main into $(UPSTREAM_VENV), run the tests"
	@echo "make demo      train a tiny model from scratch on generated data (CPU, minutes)"

setup: $(STAMPS)/grouppose

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/torch: | $(PY)
	$(PIP) install --quiet --upgrade $(BUILD_TOOLS)
	$(PIP) install --quiet $(TORCH)
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

# Editable install with the test, deploy (ONNX export, ONNX Runtime), track (tracking) and app
# (Gradio, for the browser demo) extras; rebuilds the compiled op (grouppose._C) when its
# sources change. norfair (the tracker) pins numpy < 2 in its metadata although its code runs on
# numpy 2 (tests/tracking/test_tracking.py), so it is installed without dependencies; the track extra
# brings the rest.
$(STAMPS)/grouppose: $(STAMPS)/detectron2 $(STAMPS)/xtcocotools setup.py $(CSRC)
	$(PIP) install --quiet --no-build-isolation -e ".[test,deploy,track,app]"
	$(PIP) install --quiet --no-deps "norfair==2.3.0"
	@touch $@

# The browser demo's test (tests/app/test_app.py) drives Debian's Chromium with Selenium, and is
# skipped where they are absent. apt-get runs only when chromium or chromedriver is missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(STAMPS)/selenium: $(STAMPS)/grouppose
	$(PIP) install --quiet selenium
	@touch $@

browser-test-deps: $(STAMPS)/selenium
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver; \
	else echo "browser-test-deps: no apt-get here: install chromium and chromedriver" \
		"(the browser test is skipped without them)"; fi

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

upstream-archive:
	@test -f "$(UPSTREAM_ARCHIVE)" || { echo "error: the upstream Detectron2 source archive" \
		"$(UPSTREAM_ARCHIVE) is missing: it comes with ../shared beside the repository" \
		"(or set UPSTREAM_ARCHIVE=/path/to/detectron2-source.tar.gz)" >&2; exit 1; }

upstream-setup: upstream-archive $(UPSTREAM_STAMPS)/grouppose

$(UPSTREAM_PY):
	$(PYTHON) -m venv $(UPSTREAM_VENV)

$(UPSTREAM_STAMPS)/torch: | $(UPSTREAM_PY)
	$(UPSTREAM_PIP) install --quiet --upgrade $(BUILD_TOOLS)
	$(UPSTREAM_PIP) install --quiet $(TORCH)
	@mkdir -p $(UPSTREAM_STAMPS) && touch $@

# The installer's `source` path on the unpacked archive. Uninstalling first: a usable older
# build would otherwise be kept. The C++ ops are built for the CPU (no CUDA: much quicker, and
# GroupPose-D2 calls none of them); ninja runs UPSTREAM_MAX_JOBS compilers.
$(UPSTREAM_STAMPS)/detectron2: $(UPSTREAM_STAMPS)/torch tools/install_detectron2.py \
		$(wildcard $(UPSTREAM_ARCHIVE)) | upstream-archive
	rm -rf $(UPSTREAM_SRC) && mkdir -p $(UPSTREAM_SRC)
	tar -xzf $(UPSTREAM_ARCHIVE) -C $(UPSTREAM_SRC) --strip-components=1
	$(UPSTREAM_PIP) uninstall --quiet --yes detectron2
	DETECTRON2_SOURCE=$(CURDIR)/$(UPSTREAM_SRC) FORCE_CUDA=0 CUDA_VISIBLE_DEVICES= \
		MAX_JOBS=$(UPSTREAM_MAX_JOBS) $(UPSTREAM_PY) tools/install_detectron2.py
	@touch $@

$(UPSTREAM_STAMPS)/xtcocotools: $(UPSTREAM_STAMPS)/detectron2
	$(UPSTREAM_PIP) install --quiet cython
	$(UPSTREAM_PIP) install --quiet --no-build-isolation --no-binary xtcocotools xtcocotools
	@touch $@

# Editable, like .venv's: both environments load the same in-tree grouppose._C, built against
# the same torch pins (and CUDA when available, as in `make setup`), so either may rebuild it.
$(UPSTREAM_STAMPS)/grouppose: $(UPSTREAM_STAMPS)/detectron2 $(UPSTREAM_STAMPS)/xtcocotools \
		setup.py $(CSRC)
	$(UPSTREAM_PIP) install --quiet --no-build-isolation -e ".[test,deploy,track]"
	$(UPSTREAM_PIP) install --quiet --no-deps "norfair==2.3.0"
	@touch $@

# GROUPPOSE_DETECTRON2=upstream: a test checks that this detectron2 is upstream main's build.
test-upstream: upstream-setup
	@$(UPSTREAM_PY) -c "import detectron2 as d; print('detectron2', d.__version__, d.__file__)"
	GROUPPOSE_DETECTRON2=upstream $(UPSTREAM_PY) -m pytest

clean:
	rm -rf build projects/GroupPose/grouppose/*.so projects/GroupPose/*.egg-info

# Train configs/Synthetic/grouppose_tiny.yaml from scratch on the CPU for a few minutes on the
# generated dataset (created under datasets/synthetic_pose_small/ on first use), print the
# keypoint AP table on the held-out split and draw predictions to output/demo/predictions/.
demo: setup
	$(PY) tools/benchmarks/learn_synthetic.py --output-dir output/demo --max-iter 300 \
		--eval-period 300 --draw 4
