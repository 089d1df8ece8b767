#!/usr/bin/env bash
# The pipeline on a local Spark standalone cluster (1 master, 2 workers on
# 127.0.0.1): ingest, then the scheduled refresh (`hmrec run`, every later
# stage, training spread over two executor processes), each submitted with
# spark-submit and the hmrec wheel shipped to the executors. The cluster is
# stopped at the end, also on failure.
#   scripts/cluster_demo.sh [DATA_DIR] [AS_OF] [LAKEHOUSE]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DATA=${1:-data/cluster-demo}
AS_OF=${2:-2020-09-16}
LAKE=${3:-lakehouse/cluster}
SCALE=${SCALE:-0.002}
# spark-submit's launcher looks for pyspark with whatever python3 is on PATH.
export PATH="$PWD/$VENV/bin:$PATH"
SPARK_HOME=$("$VENV/bin/python" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
export PYSPARK_PYTHON="$PWD/$VENV/bin/python"
DELTA=$("$VENV/bin/python" -c 'from importlib.metadata import version; print("io.delta:delta-spark_2.13:" + version("delta-spark"))')

rm -rf dist && "$VENV/bin/pip" wheel --quiet --no-deps -w dist . >/dev/null
WHEEL=$(ls dist/hmrec-*.whl)
[ -f "$DATA/transactions_train.csv" ] || "$VENV/bin/hmrec" generate --out "$DATA" --scale "$SCALE" --seed 42

trap 'scripts/cluster.sh stop' EXIT
scripts/cluster.sh start

submit() {  # stage, then its arguments
  local stage=$1; shift
  echo "== spark-submit jobs/$stage.py $*"
  "$VENV/bin/spark-submit" \
    --master spark://127.0.0.1:7077 \
    --packages "$DELTA" \
    --conf "spark.jars.ivy=$HOME/.cache/hmrec/ivy" \
    --conf "spark.pyspark.python=$PWD/$VENV/bin/python" \
    --conf spark.executor.cores=1 --conf spark.task.cpus=1 \
    --conf spark.executor.memory=2g --driver-memory 4g \
    --conf spark.ui.enabled=false \
    --py-files "$WHEEL" \
    "jobs/$stage.py" "$@" --set "paths.lakehouse=$LAKE" ${HMREC_SET:-}
}

submit ingest --data "$DATA"
submit run --data "$DATA" --as-of "$AS_OF" --set train.local_mode=false --set train.num_processes=2
echo "cluster demo: done; report in $LAKE/reports/$AS_OF/"
