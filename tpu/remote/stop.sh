#!/usr/bin/env bash
# Runs on each TPU worker (tpu/stop.sh): SIGTERM to the run's process group, SIGKILL if it
# is still alive after 30 s.
#
#   bash tpu/remote/stop.sh RUN

set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: stop.sh RUN" >&2; exit 2; }
pidfile="$HOME/cai_jax_logs/$1.pid"
if [[ ! -f "$pidfile" ]]; then
  echo "$(hostname): no run $1 here"
  exit 0
fi
pid="$(cat "$pidfile")"
kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 30); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
if kill -0 "$pid" 2>/dev/null; then
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$pidfile"
echo "$(hostname): stopped $1 (pid $pid)"
