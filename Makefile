# The two commands of the README: `make demo` and `make test`.  Both create/update .venv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-jetcap
# torch/torchvision: the releases that install from this environment's local disk (CPU use; CUDA build).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[export,dev]'
	# tensorrt-stubs declares a dependency on tensorrt, which cannot install without NVIDIA's index;
	# the stubs themselves are pure Python and only used for the static type check.
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	@touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf demo-out .pytest_cache .mypy_cache build dist *.egg-info
