#!/usr/bin/env bash
# A Spark standalone cluster on 127.0.0.1: one master and two workers, started
# with the spark-class launcher that ships with pyspark.
#   scripts/cluster.sh start   # master on spark://127.0.0.1:7077, UI off
#   scripts/cluster.sh stop
#   scripts/cluster.sh status
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SPARK_HOME=$("$VENV/bin/python" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$PWD/$VENV/bin/python}
RUN=${CLUSTER_DIR:-$PWD/.cluster}
MASTER_PORT=${MASTER_PORT:-7077}
WORKERS=${WORKERS:-2}
WORKER_CORES=${WORKER_CORES:-1}
WORKER_MEMORY=${WORKER_MEMORY:-4g}
export SPARK_LOCAL_IP=127.0.0.1

start_daemon() {  # name, then the class and its arguments
  local name=$1; shift
  mkdir -p "$RUN"
  nohup "$SPARK_HOME/bin/spark-class" "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_for_port() {
  for _ in $(seq 1 60); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "cluster: nothing listens on 127.0.0.1:$1 after 60 s; see $RUN/*.log" >&2
  return 1
}

case "${1:-}" in
  start)
    start_daemon master org.apache.spark.deploy.master.Master \
      --host 127.0.0.1 --port "$MASTER_PORT" --webui-port 0
    wait_for_port "$MASTER_PORT"
    for i in $(seq 1 "$WORKERS"); do
      start_daemon "worker$i" org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --webui-port 0 \
        --work-dir "$RUN/work$i" "spark://127.0.0.1:$MASTER_PORT"
    done
    # Workers register within a few seconds; the log line says so.
    for i in $(seq 1 "$WORKERS"); do
      for _ in $(seq 1 60); do
        grep -q "Successfully registered with master" "$RUN/worker$i.log" 2>/dev/null && break
        sleep 1
      done
      grep -q "Successfully registered with master" "$RUN/worker$i.log" || {
        echo "cluster: worker$i did not register; see $RUN/worker$i.log" >&2; exit 1; }
    done
    echo "cluster: spark://127.0.0.1:$MASTER_PORT with $WORKERS workers x $WORKER_CORES core(s)"
    ;;
  stop)
    for pidfile in "$RUN"/*.pid; do
      [ -e "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    done
    echo "cluster: stopped"
    ;;
  status)
    for pidfile in "$RUN"/*.pid; do
      [ -e "$pidfile" ] || { echo "cluster: not running"; exit 0; }
      n=$(basename "$pidfile" .pid)
      kill -0 "$(cat "$pidfile")" 2>/dev/null && echo "$n: running" || echo "$n: dead"
    done
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
