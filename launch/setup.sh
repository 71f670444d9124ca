#!/usr/bin/env bash
# Sets up a machine: a virtual environment with solar_jax.
#   (default)                     CPU: the package, its test and gpu-compile extras, torch==2.13.0
#   SOLAR_JAX_ACCELERATOR=tpu     a TPU VM worker: jax[tpu], no torch
#   SOLAR_JAX_ACCELERATOR=cuda    a GPU host: jax[cuda12], no torch
# torch==2.13.0 is pinned: on these machines pip takes a local CPU build (an unpinned
# torch would pull several GB of CUDA packages). torch is for tests and conversion only.
#
# Python: solar_jax and jax 0.10 need >= 3.11, and Google's TPU VM images (Ubuntu 22.04:
# tpu-ubuntu2204-base, v2-alpha-tpuv5, v2-alpha-tpuv5-lite, v2-alpha-tpuv6e) ship 3.10.
# The venv is made with the first of python3, python3.11, python3.12, python3.13 that is
# >= 3.11; else with a uv-managed CPython 3.11 (uv from PATH, else from PyPI with
# `pip install --user uv`; uv downloads the CPython build); else it stops with one line
# saying what to install, before anything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
ACCELERATOR=${SOLAR_JAX_ACCELERATOR:-cpu}
case "$ACCELERATOR" in
  cpu|tpu|cuda) ;;
  *) echo "error: SOLAR_JAX_ACCELERATOR must be cpu, tpu or cuda, got $ACCELERATOR" >&2; exit 2 ;;
esac

new_enough() {  # $1: a python executable; true when it runs and is >= 3.11
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_uv() {  # prints a uv executable, installing it from PyPI into the user site if needed
  if command -v uv >/dev/null 2>&1; then command -v uv; return 0; fi
  command -v python3 >/dev/null 2>&1 || return 1
  python3 -m pip install --user --quiet uv >/dev/null 2>&1 || return 1
  local bin
  bin="$(python3 -m site --user-base)/bin/uv"
  [ -x "$bin" ] && echo "$bin"
}

if [ -x "$VENV/bin/python" ] && ! new_enough "$VENV/bin/python"; then
  echo "error: $VENV was made with Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'), solar_jax needs >= 3.11: remove $VENV and rerun" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON=""
  for candidate in python3 python3.11 python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then PYTHON=$candidate; break; fi
  done
  if [ -n "$PYTHON" ]; then
    echo "python: $(command -v "$PYTHON") ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
    "$PYTHON" -m venv "$VENV"
  elif UV=$(find_uv); then
    echo "python: none >= 3.11 on PATH; a uv-managed CPython 3.11 ($UV)"
    "$UV" venv --quiet --seed --python 3.11 "$VENV"
  else
    found=$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo none)
    echo "error: solar_jax needs Python >= 3.11 (python3 here: $found) and uv could not be installed: install python3.11 and python3.11-venv (apt) or uv (https://docs.astral.sh/uv), then rerun launch/setup.sh" >&2
    exit 2
  fi
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
case "$ACCELERATOR" in
  cpu)
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    # gpu-compile: XLA's GPU compiler, for plan --compile on GPU hosts without a GPU (its tests
    # run in CI); ~5 GB of wheels, which pip's cache keeps for the next set-up.
    "$VENV/bin/python" -m pip install --quiet -e ".[test,gpu-compile]" ;;
  tpu) "$VENV/bin/python" -m pip install --quiet -e . "jax[tpu]" ;;
  cuda) "$VENV/bin/python" -m pip install --quiet -e ".[gpu-compile]" ;;
esac
echo "ready: $VENV ($ACCELERATOR)"
