"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax.

    import solar_jax as sj
    model = sj.load_hf("path/to/hf_dir")     # Flax NNX module; model.config is a ModelConfig
    logits = model(input_ids)                 # int32 [B, T] -> float32 [B, T, V]
    sj.save_hf(model, "out_dir", dtype="bfloat16")
"""

from solar_jax.errors import SolarError
from solar_jax.generate import generate
from solar_jax.hf import load_hf, save_hf
from solar_jax.model import Transformer
from solar_jax.model_config import ModelConfig

__all__ = ["ModelConfig", "SolarError", "Transformer", "generate", "load_hf", "save_hf"]
