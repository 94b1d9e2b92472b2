#!/usr/bin/env bash
# Installs the project on every worker (after tpu/sync.sh): Python 3.11 and a venv in
# ~/cai_jax/.venv (via uv), cai_jax, jax[tpu] and the embedded-model package.
#
#   tpu/setup.sh --name NAME --zone ZONE [--project P] [--dry-run]
#
# What runs on each worker is tpu/remote/install.sh; run it again after changing
# dependencies.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
  "--command=bash ~/$REMOTE_DIR/tpu/remote/install.sh"
