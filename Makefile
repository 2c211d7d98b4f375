# Two commands do all setup: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_PINS := torch==2.14.1 torchvision==0.29.1 fiftyone==1.22.1 open_clip_torch==3.3.0 POT==0.9.7

.PHONY: venv test demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_PINS) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/fiftyone-lazsl demo

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
