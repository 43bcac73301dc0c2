#!/usr/bin/env bash
# N local processes x D CPU devices each, jax.distributed on 127.0.0.1: a pod's program on one
# machine (what tests/test_multiprocess_runs.py runs). Usage:
#   experiments/launch/local_cpu.sh N D --config experiments/configs/grpo.py:smoke --workdir runs/mp
# Env: PYTHON (default: python), LOGDIR (per-process logs, default: the current directory),
# PORT (coordinator port, default: random). Exits with the first non-zero status. SIGTERM /
# SIGINT to this script go to every process (as a preemption or `scancel` would): they agree
# on a step, save it and exit 0; rerun the same command to resume.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS alignax-train-arguments..." >&2
  exit 2
fi
n=$1; d=$2; shift 2
port=${PORT:-$((20000 + RANDOM % 20000))}
flags=$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="$flags --xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu \
    "${PYTHON:-python}" -m alignax.cli train "$@" --coordinator "127.0.0.1:$port" \
    --num-processes "$n" --process-id "$i" > "${LOGDIR:-.}/process$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
rc=0
for p in "${pids[@]}"; do
  while true; do
    wait "$p" && s=0 || s=$?
    # A trapped signal interrupts `wait` (status > 128) while the process still runs.
    if [ "$s" -gt 128 ] && kill -0 "$p" 2>/dev/null; then continue; fi
    break
  done
  [ "$s" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$s
done
exit "$rc"
