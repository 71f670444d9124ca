"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax.

    import solar_jax as sj
    model = sj.load_hf("path/to/hf_dir")     # Flax NNX module; model.config is a ModelConfig
    logits = model(input_ids)                 # int32 [B, T] -> float32 [B, T, V]
    deeper = sj.depth_up_scale(model, m=8)    # a new model with 2(n - m) layers
    merged = sj.merge([a, b], method="slerp", t=0.5)
    sj.save_hf(model, "out_dir", dtype="bfloat16")
"""

from solar_jax.errors import SolarError
from solar_jax.generate import generate
from solar_jax.hf import load_hf, save_hf
from solar_jax.merge import merge
from solar_jax.model import Transformer
from solar_jax.model_config import ModelConfig
from solar_jax.upscale import depth_up_scale

__all__ = ["ModelConfig", "SolarError", "Transformer", "depth_up_scale", "generate", "load_hf", "merge",
           "save_hf"]
