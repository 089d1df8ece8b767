# hmrec — common commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HMREC  := $(VENV)/bin/hmrec
SCALE  ?= 0.1
DEMO_SCALE ?= 0.005
DEMO_DIR   ?= data/demo
DEMO_AS_OF ?= 2020-09-16
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-slow test-cluster test-faults demo cluster-demo bench-etl bench-train bench-score bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip wheel "setuptools<70"
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -m "not slow and not cluster and not faults"

test-slow: setup
	$(PY) -m pytest -m slow

test-cluster: setup
	$(PY) -m pytest -m cluster

test-faults: setup
	$(PY) -m pytest -m faults

demo: setup
	$(HMREC) generate --out $(DEMO_DIR) --scale $(DEMO_SCALE) --seed 42
	$(HMREC) run --data $(DEMO_DIR) --as-of $(DEMO_AS_OF) --set paths.lakehouse=./lakehouse/demo

cluster-demo: setup
	scripts/cluster_demo.sh

bench-etl: setup
	$(PY) -m hmrec.bench etl --scale $(SCALE)

bench-train: setup
	$(PY) -m hmrec.bench train --scale $(SCALE)

bench-score: setup
	$(PY) -m hmrec.bench score --scale $(SCALE)

bench: setup
	$(PY) -m hmrec.bench all --scale $(SCALE) $(BENCH_ARGS)

clean:
	rm -rf lakehouse data bench/out spark-warehouse dist .cluster
