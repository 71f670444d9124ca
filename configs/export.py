"""A training run's checkpoint -> an HF dir.

  python -m solar_jax.export --config.workdir=RUN_DIR --config.output_dir=OUT [--config.step=N]
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.workdir = ""
    c.output_dir = ""
    c.step = -1  # -1: the latest readable checkpoint
    c.dtype = "float32"
    c.max_shard_size = "5GB"
    c.overwrite = False
    return c
