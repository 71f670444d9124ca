#!/usr/bin/env bash
# The first command of the README: set up, fetch the real model, run what exists.
# Today: import SmolLM2-135M-Instruct, check it against transformers, export it to bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
PY=.venv/bin/python
OUT=${OUT:-runs/quickstart}
MODEL=$($PY -m solar_jax.real_model --reuse)
echo "== real model: $MODEL"
$PY -m solar_jax.verify --config.model_dir="$MODEL"
echo "== export (bfloat16, sharded) -> $OUT/export"
$PY -m solar_jax.convert --config.model_dir="$MODEL" --config.output_dir="$OUT/export" \
  --config.dtype=bfloat16 --config.max_shard_size=100MB --config.overwrite=True
ls -l "$OUT/export"
