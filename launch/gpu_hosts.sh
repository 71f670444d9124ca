#!/usr/bin/env bash
# Train on several GPU hosts over ssh: rsync this checkout, set up each host, start one
# process per host (the first host coordinates), lines prefixed with their host. --dry_run
# prints every command.
#   bash launch/gpu_hosts.sh --hosts=gpu0,gpu1 --dry_run -- --config=configs/cpt.py:solar --config.mesh.fsdp=-1
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 launch/launcher.py gpu "$@"
