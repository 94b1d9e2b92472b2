#!/usr/bin/env bash
# Runs on each TPU worker (tpu/launch.sh): starts `python -m cai_jax ARGS...` detached from
# the ssh session, in its own process group; log in ~/cai_jax_logs/RUN.log, pid in RUN.pid.
#
#   bash tpu/remote/start.sh RUN STAGE --config experiments/x.py [--config.a=b ...]

set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: start.sh RUN STAGE [FLAGS...]" >&2; exit 2; }
run="$1"
shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
logs="$HOME/cai_jax_logs"
mkdir -p "$logs"
if [[ -f "$logs/$run.pid" ]] && kill -0 "$(cat "$logs/$run.pid")" 2>/dev/null; then
  echo "$(hostname): run $run is still running (pid $(cat "$logs/$run.pid")); stop it first" >&2
  exit 1
fi
setsid nohup .venv/bin/python -m cai_jax "$@" >"$logs/$run.log" 2>&1 </dev/null &
echo $! >"$logs/$run.pid"
echo "$(hostname): started $run (pid $!), log $logs/$run.log"
