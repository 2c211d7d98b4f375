# Two commands do all setup: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_PINS := torch==2.14.1 torchvision==0.29.1 fiftyone==1.22.1 open_clip_torch==3.3.0 POT==0.9.7

.PHONY: venv browser test demo bench bench-quick gpu-wheels clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_PINS) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Debian's Chromium + ChromeDriver for the App browser test (system packages, no
# browser download at run time). Without root or apt the browser test skips.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; \
	else echo "note: chromium/chromedriver not installed; the browser test will be skipped"; fi

# Lint and format checks first (configuration: [tool.ruff] in pyproject.toml;
# scripts/lint_fix.sh applies ruff's fixes and formatting), then the suite.
test: venv browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider

demo: venv
	$(VENV)/bin/fiftyone-lazsl demo

# Throughput benchmark (ratios in one run; writes benchmarks/results/<device>-<model>.{json,md,png}).
# On a GPU machine: $(PY) benchmarks/run.py --device cuda  (ViT-B-16, batch 32)
bench: venv
	$(PY) benchmarks/run.py

bench-quick: venv
	$(PY) benchmarks/run.py --quick

# Wheels the GPU machines lack (Python 3.12, x86-64, no registry there), into the
# ignored .whl/ folder; benchmarks/gpu_check.sh installs them there (see its header).
GPU_WHEELS := open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 POT==0.9.7
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@ls -l .whl; du -sh .whl | awk '{print "gpu wheels: " $$1 " in .whl/"}'

clean:
	rm -rf $(VENV) build *.egg-info
