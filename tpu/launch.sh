#!/usr/bin/env bash
# Starts the same cai_jax command on every worker, in the background (it survives the
# ssh session), logging to ~/cai_jax_logs/RUN.log on each worker.
#
#   tpu/launch.sh --name NAME --zone ZONE [--slice v5e-16] [--run RUN] [--dry-run] -- \
#       sft --config experiments/sft.py --config.workdir=gs://BUCKET/RUN
#
# After `--`: the stage and its flags, as for `python -m cai_jax`. Added unless the
# command sets them itself: --config.distributed.num_processes=-1 (jax.distributed
# finds the slice's hosts by itself) and, with --slice, the slice's mesh preset
# (--config.mesh.data/fsdp/tensor from tpu/slices.tsv). Multi-host runs need a workdir
# every host sees (a gs:// bucket). --run names the log and pid files (default "run").

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
need NAME ZONE
[[ ${#COMMAND[@]} -gt 0 ]] || die "give the stage and its flags after -- (see --help)"
args=("${COMMAND[@]}")
if [[ " ${args[*]} " != *" --config.mesh."* ]]; then args+=("${MESH_FLAGS[@]}"); fi
if [[ " ${args[*]} " != *" --config.distributed.num_processes"* ]]; then
  args+=(--config.distributed.num_processes=-1)
fi
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
  "--command=bash ~/$REMOTE_DIR/tpu/remote/start.sh $RUN $(show "${args[@]}")"
