# Shared by the tpu/*.sh scripts (sourced, not run): their flags, the slice table
# (tpu/slices.tsv) and `run`, which prints a command under --dry-run and runs it
# otherwise. Flags may also come from the environment: TPU_NAME, TPU_ZONE,
# TPU_PROJECT, TPU_SLICE, TPU_RUN.
# shellcheck disable=SC2034  # the variables are read by the scripts that source this file

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$TPU_DIR")"
REMOTE_DIR="cai_jax"  # the project on every worker, under the login user's home

NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
SLICE="${TPU_SLICE:-}"
ACCELERATOR_TYPE=""
VERSION=""
RUN="${TPU_RUN:-run}"
WORKER=""
DRY_RUN=0
SPOT=0
FOLLOW=1
STOP_VM=0
COMMAND=()
MESH_FLAGS=()
GCLOUD_FLAGS=()

usage() {  # the calling script's header comment
  sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$0"
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# One argument as a shell word: bare when safe, else single-quoted (a --flag= prefix stays
# outside the quotes: --command='...').
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command line as text that a shell would split back into the same arguments.
show() {
  local words=() arg
  for arg in "$@"; do words+=("$(quote "$arg")"); done
  echo "${words[*]}"
}

run() {
  if [[ $DRY_RUN == 1 ]]; then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}

# A pipeline, given as one string (already quoted by the caller).
run_pipeline() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "$1"
  else
    echo "+ $1" >&2
    bash -o pipefail -c "$1"
  fi
}

parse_flags() {
  local flag value
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1; shift; continue ;;
      --spot) SPOT=1; shift; continue ;;
      --no-follow) FOLLOW=0; shift; continue ;;
      --vm) STOP_VM=1; shift; continue ;;
      -h|--help) usage; exit 0 ;;
      --) shift; COMMAND=("$@"); break ;;
      --*=*) flag="${1%%=*}"; value="${1#*=}"; shift ;;
      --*) [[ $# -ge 2 ]] || die "$1 needs a value"; flag="$1"; value="$2"; shift 2 ;;
      *) die "unexpected argument $1 (the command to run goes after --; see --help)" ;;
    esac
    case "$flag" in
      --name) NAME="$value" ;;
      --zone) ZONE="$value" ;;
      --project) PROJECT="$value" ;;
      --slice) SLICE="$value" ;;
      --accelerator-type) ACCELERATOR_TYPE="$value" ;;
      --version) VERSION="$value" ;;
      --run) RUN="$value" ;;
      --worker) WORKER="$value" ;;
      *) die "unknown flag $flag (see --help)" ;;
    esac
  done
  [[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run: letters, digits, '_', '.', '-' only, got '$RUN'"
  GCLOUD_FLAGS=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then GCLOUD_FLAGS+=("--project=$PROJECT"); fi
  load_slice
}

# --slice NAME: the accelerator type, runtime version and mesh flags from tpu/slices.tsv
# (explicit --accelerator-type / --version win).
load_slice() {
  [[ -n "$SLICE" ]] || return 0
  local row _name acc version _devices _hbm data fsdp tensor
  row="$(awk -F'\t' -v s="$SLICE" '$1 == s' "$TPU_DIR/slices.tsv")"
  [[ -n "$row" ]] || die "unknown slice '$SLICE'; known: $(awk -F'\t' '!/^#/ {printf "%s ", $1}' "$TPU_DIR/slices.tsv")"
  IFS=$'\t' read -r _name acc version _devices _hbm data fsdp tensor <<<"$row"
  ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-$acc}"
  VERSION="${VERSION:-$version}"
  MESH_FLAGS=("--config.mesh.data=$data" "--config.mesh.fsdp=$fsdp" "--config.mesh.tensor=$tensor")
}

# need VAR...: each must be set; the message names the flag.
need() {
  local var flag hint
  for var in "$@"; do
    flag="--$(echo "$var" | tr 'A-Z_' 'a-z-')"
    hint=""
    if [[ $var == ACCELERATOR_TYPE || $var == VERSION ]]; then hint=" (or --slice)"; fi
    [[ -n "${!var}" ]] || die "missing $flag$hint; see --help"
  done
}
