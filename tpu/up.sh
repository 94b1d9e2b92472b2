#!/usr/bin/env bash
# From nothing to a running experiment: create, sync, setup, launch (each script's own
# --help says more). Stream the log afterwards with tpu/logs.sh.
#
#   tpu/up.sh --name NAME --zone ZONE --slice v5e-16 [--run RUN] [--spot] [--dry-run] -- \
#       sft --config experiments/sft.py --config.workdir=gs://BUCKET/RUN

set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=common.sh
source "$here/common.sh"
parse_flags "$@"  # fail early on a bad flag, before anything is created
[[ ${#COMMAND[@]} -gt 0 ]] || die "give the stage and its flags after -- (see --help)"
for step in create sync setup launch; do
  bash "$here/$step.sh" "$@"
done
