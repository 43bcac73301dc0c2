#!/usr/bin/env bash
# A TPU pod slice: the same command on every host; jax.distributed finds the other hosts
# itself (TPU_WORKER_HOSTNAMES). NOT RUN in this repository's CI (no TPU); see docs/scale.md.
# Usage: experiments/launch/tpu_pod.sh TPU_NAME ZONE --config ... --workdir /mnt/shared/runs/x
# The workdir must be a filesystem every host sees (GCS through gcsfuse, Filestore NFS):
# orbax writes each host's shards there and process 0 writes metrics / summary / exports.
set -euo pipefail
tpu=$1; zone=$2; shift 2
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/alignax && .venv/bin/alignax train $(printf '%q ' "$@")"
