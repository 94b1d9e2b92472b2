#!/usr/bin/env bash
# Ships this working tree (tracked files and untracked ones git does not ignore) to
# ~/cai_jax on every worker of a TPU VM / pod slice.
#
#   tpu/sync.sh --name NAME --zone ZONE [--project P] [--dry-run]
#
# Files are added or replaced, never deleted, so ~/cai_jax/.venv survives a sync.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
archive="${TMPDIR:-/tmp}/cai_jax-$NAME.tar.gz"
run_pipeline "git -C $(quote "$REPO_DIR") ls-files -z --cached --others --exclude-standard | tar -czf $(quote "$archive") -C $(quote "$REPO_DIR") --null --ignore-failed-read -T -"
run gcloud compute tpus tpu-vm scp "$archive" "$NAME:cai_jax.tar.gz" "${GCLOUD_FLAGS[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
  "--command=mkdir -p ~/$REMOTE_DIR && tar -xzf ~/cai_jax.tar.gz -C ~/$REMOTE_DIR"
