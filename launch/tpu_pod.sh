#!/bin/bash
# TPU pods: create a TPU VM slice (directly or through a queued resource), set up every worker, and
# run `python -m vlfm.train` on all workers at once, with the workdir on a Cloud Storage bucket.
#
#   export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 BUCKET=gs://my-bucket
#   launch/tpu_pod.sh queue            # queued resource (waits for capacity); or `create` for on-demand
#   launch/tpu_pod.sh wait             # until the slice is ACTIVE
#   launch/tpu_pod.sh setup            # copy this checkout, install it + jax[tpu], mount the bucket
#   launch/tpu_pod.sh run configs/clip_b16.py clip_b16 --config.data.batch_size=4096
#   launch/tpu_pod.sh logs             # follow worker 0's log
#   launch/tpu_pod.sh ssh 'ps aux | grep vlfm'   # any command on every worker
#   launch/tpu_pod.sh stop             # SIGTERM everywhere: a checkpoint is saved, then the run stops
#   launch/tpu_pod.sh delete           # or delete-queued (the queued resource and its slice)
#   DRY_RUN=1 launch/tpu_pod.sh run configs/clip_b16.py clip_b16   # print the commands, run nothing
#
# Every worker mounts BUCKET at MOUNT with gcsfuse; the run's workdir is MOUNT/workdirs/NAME, so
# checkpoints, metrics and TensorBoard files land in gs://.../workdirs/NAME. Use a bucket with
# hierarchical namespace (gcloud storage buckets create BUCKET --enable-hierarchical-namespace
# --uniform-bucket-level-access): orbax commits a checkpoint by renaming its directory, which is
# then atomic. Running `run` again resumes from the last checkpoint. On the workers,
# VLFM_DISTRIBUTED=1 makes vlfm.train.distributed call jax.distributed.initialize(), which finds the
# other workers from the TPU metadata.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5p-32}"
QUEUED_ID="${QUEUED_ID:-${TPU_NAME}-qr}"
MOUNT="${MOUNT:-/mnt/vlfm}"
REMOTE_DIR="${REMOTE_DIR:-vlfm}"          # the checkout on each worker, relative to the home directory
JAX_VERSION="${JAX_VERSION:-0.10.2}"
PYTHON="${PYTHON:-python3.11}"             # vlfm needs Python >= 3.11; Ubuntu 22.04 images ship 3.10
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
case "$ACCELERATOR" in                    # TPU VM software version per generation
  v4-*) DEFAULT_RUNTIME=tpu-ubuntu2204-base ;;
  v5litepod-*|v5e-*) DEFAULT_RUNTIME=v2-alpha-tpuv5-lite ;;
  v5p-*) DEFAULT_RUNTIME=v2-alpha-tpuv5 ;;
  v6e-*) DEFAULT_RUNTIME=v2-alpha-tpuv6e ;;
  *) DEFAULT_RUNTIME=tpu-ubuntu2204-base ;;
esac
RUNTIME="${RUNTIME:-$DEFAULT_RUNTIME}"

quote() {  # one argument as a shell word, single-quoted when it needs quoting (readable dry runs)
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

run() {  # run a command, or print it with DRY_RUN=1
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    local out=() a; for a in "$@"; do out+=("$(quote "$a")"); done; echo "${out[*]}"
  else
    "$@"
  fi
}

on_all_workers() {  # a shell command on every worker of the slice, in parallel
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

bucket_name() {
  : "${BUCKET:?set BUCKET=gs://name}"
  echo "${BUCKET#gs://}" | cut -d/ -f1
}

cmd="${1:-}"; shift || true
case "$cmd" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot} ;;
  queue)
    run gcloud compute tpus queued-resources create "$QUEUED_ID" --node-id="$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${SPOT:+--spot} ;;
  wait)
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
      run gcloud compute tpus queued-resources describe "$QUEUED_ID" --zone="$ZONE" $PROJECT_FLAG \
        --format='value(state.state)'
      exit 0
    fi
    until [[ "$(gcloud compute tpus queued-resources describe "$QUEUED_ID" --zone="$ZONE" $PROJECT_FLAG \
                 --format='value(state.state)')" == "ACTIVE" ]]; do
      echo "waiting for $QUEUED_ID to become ACTIVE..."; sleep 60
    done ;;
  setup)
    archive="$(mktemp -d)/vlfm.tar.gz"
    run git archive --format=tar.gz -o "$archive" HEAD        # committed files only
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:vlfm.tar.gz" --zone="$ZONE" $PROJECT_FLAG --worker=all
    bucket="$(bucket_name)"
    on_all_workers "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/vlfm.tar.gz -C ~/$REMOTE_DIR \
&& (command -v $PYTHON >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $PYTHON $PYTHON-venv)) \
&& cd ~/$REMOTE_DIR && $PYTHON -m venv .venv && .venv/bin/pip install -q -U pip \
&& .venv/bin/pip install -q -e . 'jax[tpu]==$JAX_VERSION' \
&& if ! command -v gcsfuse >/dev/null; then \
echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
&& curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi \
&& sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT \
&& (mountpoint -q $MOUNT || gcsfuse --implicit-dirs $bucket $MOUNT)" ;;
  run)
    config="${1:?usage: run CONFIG NAME [--config.x=y ...]}"; name="${2:?usage: run CONFIG NAME [--config.x=y ...]}"
    shift 2
    overrides="$(printf '%q ' "$@")"
    workdir="$MOUNT/workdirs/$name"
    # Detached from the ssh session (setsid nohup), so a dropped connection does not stop the run.
    on_all_workers "cd ~/$REMOTE_DIR && mkdir -p $workdir && VLFM_DISTRIBUTED=1 \
JAX_COMPILATION_CACHE_DIR=$MOUNT/jax_cache setsid nohup .venv/bin/python -m vlfm.train --config $config \
--workdir $workdir $overrides > ~/vlfm-$name.log 2>&1 < /dev/null & echo \$! > ~/vlfm-run.pid" ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=0 \
      --command="tail -n 100 -f \$(ls -t ~/vlfm-*.log | head -1)" ;;
  ssh)
    on_all_workers "${1:?usage: ssh 'COMMAND'}" ;;
  stop)
    on_all_workers "kill -TERM \$(cat ~/vlfm-run.pid) 2>/dev/null || true" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet ;;
  delete-queued)  # the queued resource and the slice it holds
    run gcloud compute tpus queued-resources delete "$QUEUED_ID" --zone="$ZONE" $PROJECT_FLAG --force --quiet ;;
  *)
    sed -n '2,21p' "$0"; exit 2 ;;
esac
