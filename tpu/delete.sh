#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (and everything on its disks: results belong in a bucket).
#
#   tpu/delete.sh --name NAME --zone ZONE [--project P] [--dry-run]

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
