#!/usr/bin/env bash
# A local Ray cluster on this machine: one head (no work scheduled on it) and one worker, loopback only,
# token authentication on.
#
#   cluster/local.sh start     start head + worker; prints the job API address
#   cluster/local.sh stop      stop this cluster's processes (and only these)
#   cluster/local.sh status
#
# Settings (environment): RAY_PORT (6390; this cluster also uses RAY_PORT+1..+9), RAY_DASHBOARD_PORT (8275), WORKER_CPUS (2), RAY_BIN (ray),
# SKINSCAN_RAY_TEMP (/tmp/skinscan-ray-$RAY_PORT), RAY_AUTH_TOKEN_PATH (~/.ray/auth_token). Linux (stop reads /proc).
# The dashboard and job API listen on 127.0.0.1 only; from another machine use an SSH tunnel:
#   ssh -N -L 8275:127.0.0.1:8275 user@this-host    then    skinscan submit ... --address http://127.0.0.1:8275
set -euo pipefail
RAY_BIN=${RAY_BIN:-ray}
RAY_PORT=${RAY_PORT:-6390}
DASH_PORT=${RAY_DASHBOARD_PORT:-8275}
WORKER_CPUS=${WORKER_CPUS:-2}
TEMP=${SKINSCAN_RAY_TEMP:-/tmp/skinscan-ray-$RAY_PORT}
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
export RAY_USAGE_STATS_ENABLED=0
# every process of this cluster inherits this variable (Ray passes its environment on to the raylet, agents,
# workers and job drivers): `stop` finds them by it, not by command-line patterns, which miss renamed processes
MARK="SKINSCAN_LOCAL_CLUSTER=$TEMP"
export SKINSCAN_LOCAL_CLUSTER="$TEMP"

cluster_pids() {  # the processes whose environment holds this cluster's mark
  local e pid
  for e in /proc/[0-9]*/environ; do
    pid=${e#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    if grep -qzxF -- "$MARK" "$e" 2>/dev/null; then echo "$pid"; fi
  done
}
# jobs run `python` from the same environment as `ray` (e.g. the project's .venv)
PATH="$(cd "$(dirname "$(command -v "$RAY_BIN")")" && pwd):$PATH"
export PATH

case "${1:-}" in
  start)
    if [ -n "$(cluster_pids)" ]; then
      echo "a cluster with temp folder $TEMP is already running: cluster/local.sh stop first" >&2
      exit 1
    fi
    if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then  # a random token, readable by this user only
      mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
      (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")
    fi
    mkdir -p "$TEMP"
    "$RAY_BIN" start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus=0 \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" --temp-dir="$TEMP" \
      --ray-client-server-port=$((RAY_PORT + 1)) --dashboard-agent-listen-port=$((RAY_PORT + 2)) \
      --dashboard-agent-grpc-port=$((RAY_PORT + 3)) --metrics-export-port=$((RAY_PORT + 4)) \
      --runtime-env-agent-port=$((RAY_PORT + 5)) --disable-usage-stats >/dev/null
    "$RAY_BIN" start --address="127.0.0.1:$RAY_PORT" --node-ip-address=127.0.0.1 --num-cpus="$WORKER_CPUS" \
      --dashboard-agent-listen-port=$((RAY_PORT + 6)) --dashboard-agent-grpc-port=$((RAY_PORT + 7)) \
      --metrics-export-port=$((RAY_PORT + 8)) --runtime-env-agent-port=$((RAY_PORT + 9)) \
      --disable-usage-stats >/dev/null
    echo "Ray cluster up: head 127.0.0.1:$RAY_PORT (0 CPUs), worker with $WORKER_CPUS CPUs"
    echo "job API: http://127.0.0.1:$DASH_PORT   token: $RAY_AUTH_TOKEN_PATH   temp: $TEMP"
    ;;
  stop)
    # this cluster's processes only (by the mark in their environment); other Ray instances are untouched
    pids=$(cluster_pids)
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    # workers and agents exit within ~2 s of SIGTERM; the GCS, raylets and dashboard wait ~10 s on each other,
    # and a local cluster has nothing they would save: after 3 s they are killed
    for _ in $(seq 1 12); do [ -n "$(cluster_pids)" ] || break; sleep 0.25; done
    pids=$(cluster_pids)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    for _ in $(seq 1 10); do [ -n "$(cluster_pids)" ] || break; sleep 0.2; done
    if [ -n "$(cluster_pids)" ]; then echo "processes of this cluster still running: $(cluster_pids)" >&2; exit 1; fi
    echo "Ray cluster on port $RAY_PORT stopped"
    ;;
  status)
    RAY_ADDRESS="127.0.0.1:$RAY_PORT" "$RAY_BIN" status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
