# Two commands on a fresh machine:
#   make demo   -> sets up .venv and predicts membranes on the bundled sample stack with the bundled default model
#   make test   -> sets up .venv (+ Xvfb/Mesa system packages when root) and runs the test suite under Xvfb
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_ISBI := ../shared/data/isbi2012
DEMO_OUT := demo_out/$(shell date +%Y%m%d-%H%M%S)
# the `qt` extra is PyQt6; qtpy would pick PyQt5 first if an older environment still has it
export QT_API ?= pyqt6
# TORCH_INDEX=https://download.pytorch.org/whl/cpu: the CPU-only torch (the default wheel brings ~3 GB of CUDA)
TORCH_INDEX ?=
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libgl1 libegl1 libgl1-mesa-dri \
	libxkbcommon-x11-0 libfontconfig1 libdbus-1-3

.PHONY: setup system-deps demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[napari,qt,dask,ngff,bioimageio,test]'
	touch $(STAMP)

system-deps:
	@if command -v Xvfb >/dev/null 2>&1; then echo "Xvfb present"; \
	elif [ "$$(id -u)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "GUI tests need Xvfb and Mesa: run as root, or: sudo apt-get install $(APT_PACKAGES)"; exit 1; fi

demo: setup
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/neuroedge predict src/napari_neuroedge/data/sample_em.tif -o $(DEMO_OUT)/sample_membranes.tif \
		--prob $(DEMO_OUT)/sample_prob.tif --instances $(DEMO_OUT)/sample_instances.tif --overlay $(DEMO_OUT)/sample_overlay.png
	@if [ -f $(SHARED_ISBI)/test-volume.tif ]; then \
		$(VENV)/bin/neuroedge predict $(SHARED_ISBI)/test-volume.tif --slices 0:3 --tta 6 -o $(DEMO_OUT)/isbi_membranes.tif \
			--overlay $(DEMO_OUT)/isbi_overlay.png; fi
	@echo "demo outputs in $(DEMO_OUT)/ (open the *_overlay.png files)"

test: setup system-deps
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not gui" -p no:xvfb

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf $(VENV) demo_out
