#!/usr/bin/env bash
# Training on a Cloud TPU VM slice (one host or a pod): create it, put the code on every
# worker, start `python -m ps_jax.main` on every worker, follow the logs, stop, delete.
# Only gcloud is needed here; JAX's multi-controller runtime does the rest (every worker
# runs the same command, `--distributed` makes jax.distributed.initialize() find the
# other workers from the TPU metadata).
#
#   launch/tpu_pod.sh [--dry-run] COMMAND [options] [-- MAIN_FLAGS...]
#
# Commands:
#   precheck compile the run for the slice HERE, with the TPU compiler (libtpu, pip
#            install -e ".[tpu]"): `ps_jax.main --mode compile` with --config, MAIN_FLAGS
#            and --accelerator_type; exits non-zero when the train step does not fit a
#            chip. `train` and `up` run it first (when the type is known); --no_precheck
#            skips it
#   create   create the TPU VM, unless `describe` finds it
#   setup    copy the repository's committed HEAD (git archive), or clone --git_url, to
#            ~/ps_jax on every worker, and install jax[tpu], the requirements and ps_jax
#            into a virtual environment ~/ps_jax_venv there (jax needs Python >= 3.11;
#            the Ubuntu 22.04 TPU images have 3.10, so python3.11 comes from apt)
#   train    start ps_jax.main on every worker in the background (--config, --workdir,
#            MAIN_FLAGS), then follow worker --log_worker's log (Ctrl-C stops following
#            only)
#   up       create + setup + train
#   logs     follow the training log of worker --log_worker
#   exec     run MAIN_FLAGS as a shell command on every worker (e.g. copy a dataset)
#   stop     stop the training process on every worker (the pid that train recorded)
#   status   describe the TPU VM
#   delete   delete the TPU VM
#
# Options (environment variable in brackets):
#   --name NAME              TPU VM name [TPU_NAME]                      (required)
#   --zone ZONE              e.g. us-central2-b [TPU_ZONE]               (required)
#   --project PROJECT        [TPU_PROJECT]; default: gcloud's configured project
#   --accelerator_type TYPE  v4-32, v5litepod-64, v5p-128, ... [TPU_TYPE] (create)
#   --version VERSION        TPU software version [TPU_VERSION]; default by type:
#                            v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
#                            v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --spot                   create a Spot TPU VM
#   --git_url URL --git_ref REF   setup clones URL at REF instead of copying HEAD
#   --config FILE --workdir DIR   for train / up; DIR must be the same shared directory
#                            on every worker (NFS / Filestore, or a Cloud Storage FUSE
#                            mount): orbax writes every host's shards into it
#   --log_worker I           worker whose log `train` / `logs` follow (default 0)
#   --python PY              interpreter of the workers' venv [TPU_PYTHON] (python3.11)
#   --num_slices N           slices of --accelerator_type (multi-slice; precheck)
#   --local_python PY        interpreter of the precheck [PS_JAX_PYTHON]; default the
#                            repository's .venv/bin/python, else python3
#   --no_precheck            train / up: do not compile first
#   --dry-run                print the commands, one per line, and run nothing
set -euo pipefail

usage() {
  sed -n '2,53p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

DRY_RUN=0
COMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
TYPE="${TPU_TYPE:-}"
VERSION="${TPU_VERSION:-}"
SPOT=0
GIT_URL=""
GIT_REF="main"
CONFIG=""
WORKDIR=""
LOG_WORKER=0
PYTHON="${TPU_PYTHON:-python3.11}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
NUM_SLICES=1
PRECHECK=1
LOCAL_PYTHON="${PS_JAX_PYTHON:-}"
if [[ -z "$LOCAL_PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then LOCAL_PYTHON="$REPO/.venv/bin/python"; else LOCAL_PYTHON=python3; fi
fi
REMOTE_DIR="ps_jax"                 # relative to the worker's home directory
REMOTE_VENV="ps_jax_venv"
REMOTE_LOG="ps_jax_train.log"
REMOTE_PID="ps_jax_train.pid"
ARCHIVE="/tmp/ps_jax_code.tar.gz"   # the local archive `setup` copies

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) NAME="${2:?--name needs a value}"; shift ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift ;;
    --accelerator_type) TYPE="${2:?--accelerator_type needs a value}"; shift ;;
    --version) VERSION="${2:?--version needs a value}"; shift ;;
    --spot) SPOT=1 ;;
    --git_url) GIT_URL="${2:?--git_url needs a value}"; shift ;;
    --git_ref) GIT_REF="${2:?--git_ref needs a value}"; shift ;;
    --config) CONFIG="${2:?--config needs a value}"; shift ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift ;;
    --log_worker) LOG_WORKER="${2:?--log_worker needs a value}"; shift ;;
    --python) PYTHON="${2:?--python needs a value}"; shift ;;
    --num_slices) NUM_SLICES="${2:?--num_slices needs a value}"; shift ;;
    --local_python) LOCAL_PYTHON="${2:?--local_python needs a value}"; shift ;;
    --no_precheck) PRECHECK=0 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      [[ -z "$COMMAND" ]] || die "two commands given: '$COMMAND' and '$1'"
      COMMAND="$1" ;;
  esac
  shift
done
EXTRA=("$@")

case "$COMMAND" in
  precheck|create|setup|train|up|logs|exec|stop|status|delete) ;;
  "") die "no command given (precheck, create, setup, train, up, logs, exec, stop, status, delete)" ;;
  *) die "unknown command '$COMMAND' (precheck, create, setup, train, up, logs, exec, stop, status, delete)" ;;
esac
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive number, got '$NUM_SLICES'"
if [[ "$COMMAND" != precheck ]]; then
  [[ -n "$NAME" ]] || die "--name (or TPU_NAME) is required"
  [[ -n "$ZONE" ]] || die "--zone (or TPU_ZONE) is required"
fi
[[ "$LOG_WORKER" =~ ^[0-9]+$ ]] || die "--log_worker must be a worker index, got '$LOG_WORKER'"

# shellcheck disable=SC1091  # quote, show
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Runs a command, or only prints it with --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}

LOCATION=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=(--project="$PROJECT")

ssh_all() {  # runs the shell command $1 on every worker
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"
}

do_create() {
  [[ -n "$TYPE" ]] || die "create needs --accelerator_type (or TPU_TYPE), e.g. v4-32"
  local version="$VERSION"
  if [[ -z "$version" ]]; then  # the software version the slice's generation boots
    case "$TYPE" in
      v4-*) version="tpu-ubuntu2204-base" ;;
      v5litepod-*) version="v2-alpha-tpuv5-lite" ;;
      v5p-*) version="v2-alpha-tpuv5" ;;
      v6e-*) version="v2-alpha-tpuv6e" ;;
      *) die "no default --version for --accelerator_type $TYPE: give --version (or TPU_VERSION)" ;;
    esac
  fi
  local create=(gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}"
                --accelerator-type="$TYPE" --version="$version")
  [[ "$SPOT" == 0 ]] || create+=(--spot)
  if [[ "$DRY_RUN" == 1 ]]; then
    show gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format=value\(state\)
    show "${create[@]}"
  elif state="$(gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" \
                  --format='value(state)' 2>/dev/null)"; then
    echo "tpu_pod.sh: $NAME exists (state $state); reusing it" >&2
  else
    run "${create[@]}"
  fi
}

do_setup() {
  local py pip="\$HOME/$REMOTE_VENV/bin/pip" install
  py="$(quote "$PYTHON")"
  install="{ command -v $py > /dev/null || { sudo apt-get -qq -o DPkg::Lock::Timeout=600 update && sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y $py $py-venv; }; } && $py -m venv \$HOME/$REMOTE_VENV && $pip install -q -U pip && $pip install -q 'jax[tpu]>=0.10.0,<0.12' -r \$HOME/$REMOTE_DIR/requirements.txt && $pip install -q --no-deps -e \$HOME/$REMOTE_DIR"
  if [[ -n "$GIT_URL" ]]; then
    ssh_all "rm -rf \$HOME/$REMOTE_DIR && git clone -q $(quote "$GIT_URL") \$HOME/$REMOTE_DIR && git -C \$HOME/$REMOTE_DIR checkout -q $(quote "$GIT_REF") && $install"
  else
    if [[ "$DRY_RUN" == 0 && -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
      echo "tpu_pod.sh: warning: uncommitted changes in $REPO are not copied (HEAD is)" >&2
    fi
    run git -C "$REPO" archive --format=tar.gz --output="$ARCHIVE" HEAD
    run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:ps_jax_code.tar.gz" "${LOCATION[@]}" --worker=all
    ssh_all "rm -rf \$HOME/$REMOTE_DIR && mkdir -p \$HOME/$REMOTE_DIR && tar -xzf \$HOME/ps_jax_code.tar.gz -C \$HOME/$REMOTE_DIR && $install"
  fi
}

# Compiles the run for the slice on this machine (no TPU, no gcloud): a train step that
# does not fit a chip stops here, before anything is booked.
do_precheck() {
  [[ -n "$TYPE" ]] || die "precheck needs --accelerator_type (or TPU_TYPE), e.g. v5p-128"
  [[ -n "$CONFIG" ]] || die "precheck needs --config FILE (relative to the repository)"
  local check=(env -C "$REPO" JAX_PLATFORMS=cpu "$LOCAL_PYTHON" -m ps_jax.main --mode compile
               --config="$CONFIG" --workdir="${TMPDIR:-/tmp}/ps_jax_precheck_${NAME:-$TYPE}"
               --config.compile.topology="$TYPE")
  [[ "$NUM_SLICES" == 1 ]] || check+=(--config.compile.num_slices="$NUM_SLICES")
  run "${check[@]}" "${EXTRA[@]}" || die "precheck: the run does not compile or fit on $TYPE (see above); nothing was booked"
}

maybe_precheck() {  # before train / up: only when the slice type is known
  if [[ "$PRECHECK" == 1 && -n "$TYPE" ]]; then
    do_precheck
  elif [[ "$PRECHECK" == 1 ]]; then
    echo "tpu_pod.sh: no --accelerator_type (or TPU_TYPE): precheck skipped" >&2
  fi
}

do_logs() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$LOG_WORKER" \
    --command="tail -n +1 -F \$HOME/$REMOTE_LOG"
}

do_train() {
  [[ -n "$CONFIG" ]] || die "$COMMAND needs --config FILE (relative to the repository)"
  [[ -n "$WORKDIR" ]] || die "$COMMAND needs --workdir DIR (shared by all workers)"
  local main flag
  main="\$HOME/$REMOTE_VENV/bin/python -m ps_jax.main --distributed --config=$(quote "$CONFIG") --workdir=$(quote "$WORKDIR")"
  for flag in "${EXTRA[@]}"; do
    main+=" $(quote "$flag")"
  done
  # A TPU is used by one process at a time: refuse to start over a live run.
  ssh_all "cd \$HOME/$REMOTE_DIR || exit 1; if [ -f \$HOME/$REMOTE_PID ] && kill -0 \$(cat \$HOME/$REMOTE_PID) 2>/dev/null; then echo 'ps_jax is already running (tpu_pod.sh stop)' >&2; exit 1; fi; nohup $main > \$HOME/$REMOTE_LOG 2>&1 < /dev/null & echo \$! > \$HOME/$REMOTE_PID"
  do_logs
}

case "$COMMAND" in
  precheck) do_precheck ;;
  create) do_create ;;
  setup) do_setup ;;
  train) maybe_precheck; do_train ;;
  up) [[ -n "$CONFIG" ]] || die "up needs --config FILE (relative to the repository)"
      maybe_precheck; do_create; do_setup; do_train ;;
  logs) do_logs ;;
  exec)
    [[ ${#EXTRA[@]} -gt 0 ]] || die "exec needs a command after --"
    ssh_all "${EXTRA[*]}" ;;
  stop) ssh_all "if [ -f \$HOME/$REMOTE_PID ]; then kill \$(cat \$HOME/$REMOTE_PID) 2>/dev/null || true; rm -f \$HOME/$REMOTE_PID; fi" ;;
  status) run gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" ;;
  delete) run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet ;;
esac
