"""Checks an HF dir imported into solar_jax against transformers (needs torch).

  python -m solar_jax.verify --config=configs/verify.py --config.model_dir=HF_DIR
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model_dir = ""
    c.prompt = "What is the capital of France?"
    c.chat = True  # wrap the prompt in the tokenizer's chat template when it has one
    c.max_new_tokens = 20
    c.tolerance = 1e-3  # max |logit difference| accepted, float32
    return c
