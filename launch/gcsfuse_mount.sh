#!/usr/bin/env bash
# Mount a GCS bucket read-only on this TPU VM worker with gcsfuse (installing gcsfuse from
# Google's apt repository when it is missing), so that training reads token shards in place:
# grain's ArrayRecord reader then fetches only the records this host reads (1/N of a pod's
# corpus), where a gs:// shard dir is copied whole to every host first.
#   bash launch/gcsfuse_mount.sh BUCKET MOUNT_POINT      (the launcher's --gcsfuse=BUCKET:MOUNT_POINT)
set -euo pipefail
if [ "$#" -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "error: usage: launch/gcsfuse_mount.sh BUCKET MOUNT_POINT" >&2
  exit 2
fi
bucket="${1#gs://}"
bucket="${bucket%/}"
mount_point="$2"
if [[ "$bucket" == */* ]]; then
  echo "error: give a bucket name (got gs://$bucket); point --config.data.train_files at a directory under the mount" >&2
  exit 2
fi
if mountpoint -q "$mount_point" 2>/dev/null; then
  echo "gcsfuse: $mount_point is mounted already"
  exit 0
fi
if ! command -v gcsfuse >/dev/null 2>&1; then
  # https://cloud.google.com/storage/docs/cloud-storage-fuse/install (Ubuntu / Debian)
  repo="gcsfuse-$(lsb_release -c -s)"
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt $repo main" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi
sudo mkdir -p "$mount_point"
sudo chown "$(id -u):$(id -g)" "$mount_point"
# Read-only; implicit dirs so that prefixes written by other tools list as directories.
gcsfuse -o ro --implicit-dirs "$bucket" "$mount_point"
echo "gcsfuse: gs://$bucket on $mount_point"
