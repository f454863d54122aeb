# shellcheck shell=bash
# Shell helpers shared by launch/local.sh and launch/tpu_pod.sh (sourced, not run).
# launch/slurm_gpu.sbatch keeps its own copy: sbatch runs a spooled copy of the script,
# away from this directory.

# Quotes one word for a shell: plain words as they are, anything else single-quoted
# (after the `--flag=` of a flag).
quote() {
  local word="$1" flag=""
  if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$word"
    return
  fi
  if [[ "$word" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    flag="${BASH_REMATCH[1]}"
    word="${BASH_REMATCH[2]}"
  fi
  printf "%s'%s'" "$flag" "${word//\'/\'\\\'\'}"
}

# Prints a command, one line, so that it can be pasted into a shell.
show() {
  local out=() word
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  printf '%s\n' "${out[*]}"
}
