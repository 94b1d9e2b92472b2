#!/usr/bin/env bash
# Streams a run's log from a worker (default worker 0: process 0 prints the progress and
# the summary); --worker all streams every worker's; --no-follow prints and returns.
#
#   tpu/logs.sh --name NAME --zone ZONE [--run RUN] [--worker 0|all|N] [--no-follow] [--dry-run]

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
if [[ $FOLLOW == 1 ]]; then tail_flags="-n 200 -F"; else tail_flags="-n 200"; fi
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" "--worker=${WORKER:-0}" \
  "--command=tail $tail_flags ~/cai_jax_logs/$RUN.log"
