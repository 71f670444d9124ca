#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment with solar_jax and its test extra.
# torch==2.13.0 is pinned: on these machines pip takes a local CPU build (an unpinned
# torch would pull several GB of CUDA packages). torch is for tests and conversion only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
echo "ready: $VENV"
