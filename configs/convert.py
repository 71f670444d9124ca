"""HF dir -> solar_jax -> HF dir: re-shard, change dtype, check a checkpoint imports.

  python -m solar_jax.convert --config=configs/convert.py \
      --config.model_dir=HF_DIR --config.output_dir=OUT --config.dtype=bfloat16
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model_dir = ""
    c.output_dir = ""
    c.dtype = ""  # float32 | bfloat16 | float16; empty keeps the source's dtype
    c.max_shard_size = "5GB"
    c.overwrite = False
    return c
