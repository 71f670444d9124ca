"""SOLAR's synthetic math sets (Synth. Math-Instruct / Math-Alignment) as JSONL.

  python -m solar_jax.synth_math --config.output_dir=data/synth_math --config.num_train=2000
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.output_dir = ""
    c.num_train = 2000
    c.num_eval = 200
    c.seed = 0
    c.overwrite = False
    return c
