#!/usr/bin/env bash
# Multi-host training rehearsed on one machine: N processes of `python -m ps_jax.main`,
# each with K fake CPU devices, joined by jax.distributed on localhost.
#
#   launch/local.sh [--dry-run] [--num_processes N] [--devices_per_process K]
#                   [--port PORT] [--log_dir DIR] [--python PY] -- MAIN_FLAGS...
#
#   launch/local.sh --num_processes 2 --devices_per_process 4 -- \
#     --config configs/demo.py --workdir /tmp/ps_jax_2proc
#
# MAIN_FLAGS go to ps_jax.main unchanged (--config and --workdir are required there).
# XLA_FLAGS already set in the environment are kept (the device count is appended).
# Process i runs with --coordinator_address=localhost:PORT --num_processes=N
# --process_id=i and writes DIR/process_<i>.log (DIR defaults to <workdir>/logs);
# process 0's log is also streamed here. The script waits for all processes, stops the
# others as soon as one fails, and exits non-zero if any failed. --dry-run prints the
# commands, one per line, and runs nothing.
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

DRY_RUN=0
NUM_PROCESSES=2
DEVICES=4
PORT=12355
LOG_DIR=""
PYTHON="${PYTHON:-python3}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --num_processes) NUM_PROCESSES="${2:?--num_processes needs a value}"; shift ;;
    --devices_per_process) DEVICES="${2:?--devices_per_process needs a value}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift ;;
    --log_dir) LOG_DIR="${2:?--log_dir needs a value}"; shift ;;
    --python) PYTHON="${2:?--python needs a value}"; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (ps_jax.main flags go after --; see --help)" ;;
  esac
  shift
done
MAIN_FLAGS=("$@")

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$NUM_PROCESSES" || die "--num_processes must be a positive integer, got '$NUM_PROCESSES'"
is_count "$DEVICES" || die "--devices_per_process must be a positive integer, got '$DEVICES'"
is_count "$PORT" && [[ "$PORT" -le 65535 ]] || die "--port must be a TCP port, got '$PORT'"

# The workdir (for the default log directory) from --workdir DIR or --workdir=DIR.
WORKDIR=""
for ((i = 0; i < ${#MAIN_FLAGS[@]}; i++)); do
  case "${MAIN_FLAGS[i]}" in
    --workdir=*) WORKDIR="${MAIN_FLAGS[i]#--workdir=}" ;;
    --workdir) WORKDIR="${MAIN_FLAGS[i + 1]:-}" ;;
  esac
done
[[ -n "$WORKDIR" ]] || die "ps_jax.main needs --workdir DIR (after --)"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"

# shellcheck disable=SC1091  # quote, show
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command_for() {  # the argv of process $1
  echo "env"
  echo "JAX_PLATFORMS=cpu"
  echo "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES"
  echo "$PYTHON"
  echo "-m"
  echo "ps_jax.main"
  echo "--coordinator_address=localhost:$PORT"
  echo "--num_processes=$NUM_PROCESSES"
  echo "--process_id=$1"
}

if [[ "$DRY_RUN" == 1 ]]; then
  show mkdir -p "$LOG_DIR"
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    mapfile -t argv < <(command_for "$i")
    printf '%s > %s 2>&1 &\n' "$(show "${argv[@]}" "${MAIN_FLAGS[@]}")" \
      "$(show "$LOG_DIR/process_$i.log")"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
TAIL_PID=""
stop_all() {  # stops the processes this script started, by their ids
  local pid
  for pid in "${PIDS[@]}" $TAIL_PID; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  mapfile -t argv < <(command_for "$i")
  echo "process $i: $(show "${argv[@]}" "${MAIN_FLAGS[@]}") > $LOG_DIR/process_$i.log" >&2
  "${argv[@]}" "${MAIN_FLAGS[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
tail -n +1 -F "$LOG_DIR/process_0.log" 2>/dev/null &
TAIL_PID=$!

# Wait for every process; the first failure stops the others (they would otherwise
# block in a collective until jax's heartbeat timeout).
declare -A STATUS=()
FAILED=0
while [[ ${#STATUS[@]} -lt $NUM_PROCESSES ]]; do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    [[ -z "${STATUS[$i]:-}" ]] || continue
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      rc=0
      wait "${PIDS[i]}" || rc=$?
      STATUS[$i]=$rc
      if [[ "$rc" != 0 && "$FAILED" == 0 ]]; then
        FAILED=1
        echo "local.sh: process $i exited with status $rc; stopping the others" >&2
        stop_all
      fi
    fi
  done
  sleep 0.5
done
kill "$TAIL_PID" 2>/dev/null || true
wait "$TAIL_PID" 2>/dev/null || true

if [[ "$FAILED" == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    echo "local.sh: process $i: exit status ${STATUS[$i]} (log: $LOG_DIR/process_$i.log)" >&2
  done
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    if [[ "${STATUS[$i]}" != 0 ]]; then
      echo "---- last lines of $LOG_DIR/process_$i.log" >&2
      tail -n 20 "$LOG_DIR/process_$i.log" >&2
    fi
  done
  exit 1
fi
echo "local.sh: all $NUM_PROCESSES processes finished (logs in $LOG_DIR)" >&2
