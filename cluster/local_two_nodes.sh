#!/usr/bin/env bash
# A two-node Ray cluster on 127.0.0.1, for trying rayalign's multi-node path on one machine:
# a head node and a worker node, each with its own resources (the worker carries a custom
# resource `worker_node` so a test or a job can ask for it).
#
#   cluster/local_two_nodes.sh start     # prints RAY_ADDRESS=http://127.0.0.1:<dashboard port>
#   cluster/local_two_nodes.sh status
#   cluster/local_two_nodes.sh stop      # stops only this cluster's processes, not other Ray instances
#
# Everything lives in one directory, $RAYALIGN_LOCAL_CLUSTER (default /tmp/rayalign-local; keep it
# short: Ray puts unix sockets under it). Ports are free ones picked at start, so this cluster does
# not collide with other Ray or Serve instances on the machine. `start` writes $DIR/cluster.env
# (RAY_ADDRESS, GCS_ADDRESS, HEAD_METRICS_PORT, WORKER_METRICS_PORT, ...) for scripts and tests.
# Resources: HEAD_CPUS (2), WORKER_CPUS (1), OBJECT_STORE_BYTES (300 MB per node).
set -euo pipefail

DIR="${RAYALIGN_LOCAL_CLUSTER:-/tmp/rayalign-local}"
RAY="${RAY:-$(command -v ray || true)}"
HEAD_CPUS="${HEAD_CPUS:-2}"
WORKER_CPUS="${WORKER_CPUS:-1}"
OBJECT_STORE_BYTES="${OBJECT_STORE_BYTES:-300000000}"
# One auth mode for both nodes (a token in ~/.ray would otherwise switch the head alone to token auth).
# The dashboard listens on 127.0.0.1 only; set RAY_AUTH_MODE=token to require Ray's token as well.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

free_ports() {  # N free TCP ports on 127.0.0.1, space separated
  "${PYTHON:-python3}" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

our_pids() {  # processes whose command line names this cluster's directory, and their descendants
  local roots
  roots="$(pgrep -f -- "--[a-z_-]*=$DIR/" | grep -vx "$$" || true)"
  [ -z "$roots" ] && return 0
  ps -eo pid=,ppid=,stat= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, "\n"); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    $3 !~ /^Z/ { parent[$1] = $2 }
    END { changed = 1
          while (changed) { changed = 0
            for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
          for (p in keep) print p }'
}

start() {
  if [ -z "$RAY" ]; then echo "error: no 'ray' on PATH: activate the project's virtualenv" >&2; exit 2; fi
  if [ -f "$DIR/cluster.env" ] && [ -n "$(our_pids)" ]; then
    echo "already running:"; cat "$DIR/cluster.env"; return 0
  fi
  mkdir -p "$DIR"
  read -r GCS DASH HEAD_METRICS WORKER_METRICS CLIENT HEAD_AGENT WORKER_AGENT <<<"$(free_ports 7)"
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$GCS" --temp-dir="$DIR" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH" \
    --ray-client-server-port="$CLIENT" --dashboard-agent-listen-port="$HEAD_AGENT" \
    --metrics-export-port="$HEAD_METRICS" --num-cpus="$HEAD_CPUS" --num-gpus=0 \
    --object-store-memory="$OBJECT_STORE_BYTES" --disable-usage-stats >"$DIR/head.log" 2>&1 \
    || { cat "$DIR/head.log" >&2; exit 1; }
  "$RAY" start --address="127.0.0.1:$GCS" --node-ip-address=127.0.0.1 \
    --dashboard-agent-listen-port="$WORKER_AGENT" --metrics-export-port="$WORKER_METRICS" \
    --num-cpus="$WORKER_CPUS" --num-gpus=0 --resources='{"worker_node": 1}' \
    --object-store-memory="$OBJECT_STORE_BYTES" --disable-usage-stats >"$DIR/worker.log" 2>&1 \
    || { cat "$DIR/worker.log" >&2; stop; exit 1; }
  cat >"$DIR/cluster.env" <<EOF
RAY_ADDRESS=http://127.0.0.1:$DASH
GCS_ADDRESS=127.0.0.1:$GCS
HEAD_METRICS_PORT=$HEAD_METRICS
WORKER_METRICS_PORT=$WORKER_METRICS
RAY_TEMP_DIR=$DIR
EOF
  echo "two-node Ray cluster up (head: $HEAD_CPUS CPUs; worker: $WORKER_CPUS CPUs + resource worker_node)"
  cat "$DIR/cluster.env"
  echo "submit with: rayalign submit jobs/dpo_quickstart.yaml --address http://127.0.0.1:$DASH"
}

stop() {
  local pids
  pids="$(our_pids)"
  if [ -z "$pids" ]; then echo "no cluster running under $DIR"; rm -f "$DIR/cluster.env"; return 0; fi
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 6); do  # 3 s of grace, then SIGKILL (as `ray stop --force` would)
    pids="$(our_pids)"
    [ -z "$pids" ] && break
    sleep 0.5
  done
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  rm -f "$DIR/cluster.env"
  echo "stopped the cluster under $DIR"
}

status() {
  if [ -f "$DIR/cluster.env" ] && [ -n "$(our_pids)" ]; then
    cat "$DIR/cluster.env"
    # shellcheck disable=SC1091
    . "$DIR/cluster.env"
    "$RAY" status --address="$GCS_ADDRESS" || true
  else
    echo "no cluster running under $DIR"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
