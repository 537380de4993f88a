# Two entry points (see README): `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): requirements.txt pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a bare `torch` (or a newer range pulled by monai) would fetch a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PIP) -r requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orthodiffusion demo --out demo-output

test: $(STAMP)
	PYTHONUTF8=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-output
