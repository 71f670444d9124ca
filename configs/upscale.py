"""Depth up-scaling of an HF dir, streamed tensor by tensor (SOLAR: n=32, m=8 -> 48 layers).

  python -m solar_jax.upscale --config=configs/upscale.py \
      --config.model_dir=HF_DIR --config.m=8 --config.output_dir=OUT
  # other seams: --config.slices=0:24,8:32   (end exclusive)
  # from several models: --config.model_dir=A,B --config.slices=0:16@0,8:32@1   (start:end@k takes model k)
  # plain duplication (2n layers):  --config.m=0
  # LLaMA Pro (P identity blocks interleaved):  --config.slices=expand:14 --config.init=identity
  # start exactly at the base model's function:  --config.init=identity   (or scaled; see surgery/upscale.py)
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model_dir = ""  # an HF dir or a solar_jax run dir; comma-separated for slices of several models
    c.m = 8  # layers dropped at the seam from each copy: s = 2(n - m)
    c.slices = ""  # overrides m when set
    c.init = "copy"  # repeated layers: copy (SOLAR) | identity (o, down = 0 after the first copy: f(x) unchanged) | scaled (o, down / k)
    c.output_dir = ""
    c.dtype = ""  # empty keeps the input dtype
    c.max_shard_size = "5GB"
    c.overwrite = False
    return c
