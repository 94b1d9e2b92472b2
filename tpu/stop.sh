#!/usr/bin/env bash
# Stops a run on every worker (SIGTERM to its process group, SIGKILL after 30 s);
# --vm then also stops the TPU VM (single-host VMs only: pod slices cannot be stopped,
# only deleted).
#
#   tpu/stop.sh --name NAME --zone ZONE [--run RUN] [--vm] [--dry-run]

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
  "--command=bash ~/$REMOTE_DIR/tpu/remote/stop.sh $RUN"
if [[ $STOP_VM == 1 ]]; then
  run gcloud compute tpus tpu-vm stop "$NAME" "${GCLOUD_FLAGS[@]}"
fi
