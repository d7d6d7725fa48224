# The two commands of the README: `make demo` and `make test`.  Both create/update .venv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-jetcap
# torch/torchvision: the releases that install from this environment's local disk (CPU use; CUDA build).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test py36 triton-env test-triton clean

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

# A Python 3.6 environment like JetPack 4.6's (pyenv's 3.6 when present): the runtime's real check.
PY36 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.6*/bin/python3.6) $(shell command -v python3.6 2>/dev/null))
VENV36 ?= .venv36
STAMP36 := $(VENV36)/.stamp-jetcap

py36: $(if $(PY36),$(STAMP36),)

$(STAMP36): setup.cfg setup.py pyproject.toml
	@test -x $(VENV36)/bin/python || $(PY36) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q --upgrade "pip==21.3.1"
	$(VENV36)/bin/python -m pip install -q "wheel==0.37.1"
	# what a Jetson installs: the runtime dependencies only, through setup.py and its old setuptools (40)
	$(VENV36)/bin/python -m pip install -q "onnxruntime==1.10.0" "numpy==1.19.5" "click==8.0.4" "Pillow==8.3.2"
	$(VENV36)/bin/python -m pip install -q --no-deps --no-build-isolation .
	@touch $(STAMP36)

test: install py36 triton-env
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Triton Inference Server tools in their own venv: nvidia-pytriton (which ships the tritonserver binary)
# pins numpy < 2, so it cannot share .venv.  tests/triton_serving uses it through subprocesses when it exists.
VENV_TRITON ?= .venv-triton
STAMP_TRITON := $(VENV_TRITON)/.stamp-jetcap
# ONNX Runtime for the in-process python-backend models; the numpy<2 pin lets pip pick a compatible release
ORT_TRITON ?= onnxruntime

triton-env: $(STAMP_TRITON)

$(STAMP_TRITON): setup.cfg setup.py pyproject.toml
	@test -x $(VENV_TRITON)/bin/python || $(PYTHON) -m venv $(VENV_TRITON)
	$(VENV_TRITON)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(VENV_TRITON)/bin/python -m pip install -q -e '.[triton]' '$(ORT_TRITON)' 'numpy<2'
	@touch $(STAMP_TRITON)

test-triton: install triton-env
	$(PY) -m pytest -q -p no:cacheprovider tests/triton_serving $(PYTEST_ARGS)

clean:
	rm -rf demo-out .pytest_cache .mypy_cache build dist *.egg-info
