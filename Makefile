# hmrec — common commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HMREC  := $(VENV)/bin/hmrec
SCALE  ?= 0.1
DEMO_SCALE ?= 0.005
DEMO_DIR   ?= data/demo
DEMO_AS_OF ?= 2020-09-16
DEMO_LAKE  ?= ./lakehouse/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-slow test-cluster test-faults test-dag demo cluster-demo bench-etl bench-train bench-score bench clean

$(VENV)/.installed: setup.py
	@echo "Installing hmrec and its dependencies (torch, Spark, MLflow, JupyterLab, ...) into $(VENV):"
	@echo "about 6 GB of disk and 3-4 minutes the first time."
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --progress-bar on --upgrade pip wheel "setuptools<70"
	$(VENV)/bin/pip install --progress-bar on -e '.[test,notebooks]'
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

# The Airflow DAG (dags/hmrec_weekly.py) loaded and run by `airflow dags test` on tiny data. Airflow
# goes into a virtual environment of its own, made on first use (a few minutes) and reused after.
AIRFLOW_VENV ?= $(HOME)/.cache/hmrec/airflow-venv
test-dag: setup
	HMREC_AIRFLOW_VENV=$(AIRFLOW_VENV) $(PY) -m pytest tests/test_dag.py -m slow

# The generator writes transactions_train.csv last: when it is there, the sample is complete
# and is not generated again (delete $(DEMO_DIR) for a new one, e.g. after changing DEMO_SCALE).
$(DEMO_DIR)/transactions_train.csv: | setup
	$(HMREC) generate --out $(DEMO_DIR) --scale $(DEMO_SCALE) --seed 42

# A second `make demo` skips every finished stage; `hmrec run` ends with the commands to look
# at the report, a customer, the notebooks and MLflow.
demo: setup $(DEMO_DIR)/transactions_train.csv
	$(HMREC) run --data $(DEMO_DIR) --as-of $(DEMO_AS_OF) --set paths.lakehouse=$(DEMO_LAKE)

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
