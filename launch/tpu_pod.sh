#!/usr/bin/env bash
# Train on a TPU VM slice: create (or --reuse) it, install this checkout on every worker,
# run the train command on all workers, stream logs, --delete tears it down. --dry_run
# prints every command.
#   bash launch/tpu_pod.sh --name=solar --zone=us-east5-a --accelerator=v5p-128 --dry_run \
#       -- --config=configs/cpt.py:solar --config.model_dir=/mnt/mistral-7b --config.checkpoint_dir=gs://B/ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 launch/launcher.py tpu "$@"
