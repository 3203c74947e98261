#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: one pippo-train process per TPU VM host, started on all hosts at
# once over `gcloud ... tpu-vm ssh --worker=all`. `--distributed` makes pippo-train call
# `jax.distributed.initialize()` with no arguments; on TPU VMs it finds the coordinator, the
# process count and this host's index itself. Every host reads its own slice of the data and
# writes its shards of each checkpoint, so WORKDIR and data.path must name storage every host sees
# (a gcsfuse mount of a bucket or a Filestore NFS share, at the same path on every host).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh \
#       --config configs/p3_posttrain.py:res=512 --workdir /mnt/runs/p3_512 \
#       --config.data.path=/mnt/data/captures
#
# Environment: TPU_NAME, ZONE (required); PROJECT (optional); REPO, the checkout on every host
# with its virtualenv in REPO/.venv (default: ~/pippo_jax); LOG, a per-host log file: when set the
# run is detached (nohup) and survives the ssh session; follow it with `tail -f` on a host.
# Set up every host once, e.g. with --command="git clone ... ~/pippo_jax && cd ~/pippo_jax &&
# python3 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]'".
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
[[ $# -gt 0 ]] || { echo "usage: TPU_NAME=... ZONE=... $0 PIPPO_TRAIN_ARGS..." >&2; exit 2; }
REPO=${REPO:-'~/pippo_jax'}
ARGS=$(printf ' %q' "$@")  # quoted once more for the remote shell
RUN="cd $REPO && . .venv/bin/activate && pippo-train --distributed$ARGS"
if [[ -n "${LOG:-}" ]]; then
  RUN="nohup bash -c $(printf '%q' "$RUN") > $(printf '%q' "$LOG") 2>&1 < /dev/null &"
fi
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$RUN"
