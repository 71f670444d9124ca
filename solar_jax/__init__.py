"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax.

    import solar_jax as sj
    model = sj.load_hf("path/to/hf_dir")     # Flax NNX module; model.config is a ModelConfig
    logits = model(input_ids)                 # int32 [B, T] -> float32 [B, T, V]
    deeper = sj.depth_up_scale(model, m=8)    # a new model with 2(n - m) layers
    merged = sj.merge_models([a, b], method="slerp", t=0.5)
    sj.save_hf(model, "out_dir", dtype="bfloat16")

The library is in layers, each importing only those below it: hardware -> models ->
parallel -> weights -> surgery -> data -> inference -> training -> planning -> evaluation
-> pipelines. The modules at this level (train, upscale, merge, ...) are the commands,
`python -m solar_jax.X`.
"""

import warnings

from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.inference.generate import generate
from solar_jax.models.transformer import Transformer
from solar_jax.surgery.merge import merge_models
from solar_jax.surgery.upscale import depth_up_scale
from solar_jax.weights.hf import load_hf, save_hf

__all__ = ["ModelConfig", "SolarError", "Transformer", "depth_up_scale", "generate", "load_hf", "merge_models",
           "save_hf"]


def __getattr__(name: str):
    """`sj.merge`, the function's name until 0.1: deprecated, removed in 0.2. It shared its
    name with the command module solar_jax.merge, which Python binds onto the package when
    the command is imported; the function is now merge_models, and this old name answers
    only while that module is not imported in the same process."""
    if name == "merge":
        warnings.warn("solar_jax.merge (the function) is deprecated: use solar_jax.merge_models",
                      DeprecationWarning, stacklevel=2)
        return merge_models
    raise AttributeError(f"module 'solar_jax' has no attribute {name!r}")
