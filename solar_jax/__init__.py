"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax.

    import solar_jax as sj
    model = sj.load_hf("path/to/hf_dir")     # Flax NNX module; model.config is a ModelConfig
    logits = model(input_ids)                 # int32 [B, T] -> float32 [B, T, V]
    deeper = sj.depth_up_scale(model, m=8)    # a new model with 2(n - m) layers
    merged = sj.merge([a, b], method="slerp", t=0.5)
    sj.save_hf(model, "out_dir", dtype="bfloat16")

The library is in layers, each importing only those below it: hardware -> models -> parallel
-> weights -> surgery -> data -> inference -> training -> planning -> evaluation -> pipelines. The modules at this level (train, upscale, merge,
...) are the commands, `python -m solar_jax.X`.
"""

import sys
import types

from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.inference.generate import generate
from solar_jax.models.transformer import Transformer
from solar_jax.surgery.merge import merge
from solar_jax.surgery.upscale import depth_up_scale
from solar_jax.weights.hf import load_hf, save_hf

__all__ = ["ModelConfig", "SolarError", "Transformer", "depth_up_scale", "generate", "load_hf", "merge", "save_hf"]


class _Package(types.ModuleType):
    """Keeps the public names bound to the API. The command `python -m solar_jax.merge` is
    a module named like the function `sj.merge`, and Python's import system binds every
    imported submodule onto its package (importlib._bootstrap._find_and_load_unlocked):
    importing the command would replace the function. The module stays in sys.modules."""

    def __setattr__(self, name, value):
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
