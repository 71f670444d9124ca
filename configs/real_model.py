"""The real model for tests and the quickstart as a plain HF dir.

  python -m solar_jax.real_model [--config.output_dir=DIR] [--config.reuse=True]
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.output_dir = ""  # empty: ~/.cache/solar_jax/smollm2-135m-instruct (or $SOLAR_JAX_CACHE/...)
    c.gguf = ""  # a local GGUF file instead of the PyPI package
    c.overwrite = False
    c.reuse = False  # output_dir already holds the model: just print its path
    return c
