#!/usr/bin/env bash
# Sets up a machine: a virtual environment with solar_jax.
#   (default)                     CPU: the package and its test extra, torch==2.13.0
#   SOLAR_JAX_ACCELERATOR=tpu     a TPU VM worker: jax[tpu], no torch
#   SOLAR_JAX_ACCELERATOR=cuda    a GPU host: jax[cuda12], no torch
# torch==2.13.0 is pinned: on these machines pip takes a local CPU build (an unpinned
# torch would pull several GB of CUDA packages). torch is for tests and conversion only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
ACCELERATOR=${SOLAR_JAX_ACCELERATOR:-cpu}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
case "$ACCELERATOR" in
  cpu)
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]" ;;
  tpu) "$VENV/bin/python" -m pip install --quiet -e . "jax[tpu]" ;;
  cuda) "$VENV/bin/python" -m pip install --quiet -e . "jax[cuda12]" ;;
  *) echo "error: SOLAR_JAX_ACCELERATOR must be cpu, tpu or cuda, got $ACCELERATOR" >&2; exit 2 ;;
esac
echo "ready: $VENV ($ACCELERATOR)"
