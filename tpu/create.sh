#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice (plain TPU VMs: no Pathways, no Kubernetes).
#
#   tpu/create.sh --name NAME --zone ZONE --slice v5e-16 [--spot] [--project P] [--dry-run]
#   tpu/create.sh --name NAME --zone ZONE --accelerator-type v5litepod-16 --version v2-alpha-tpuv5-lite
#
# --slice fills --accelerator-type and --version from tpu/slices.tsv (either may be
# given to override). --dry-run prints the gcloud command instead of running it.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE ACCELERATOR_TYPE VERSION
args=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}"
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$VERSION")
if [[ $SPOT == 1 ]]; then args+=(--spot); fi
run "${args[@]}"
