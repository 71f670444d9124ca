"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax.

    import solar_jax as sj
    model = sj.load_hf("path/to/hf_dir")     # Flax NNX module; model.config is a ModelConfig
    logits = model(input_ids)                 # int32 [B, T] -> float32 [B, T, V]
    deeper = sj.depth_up_scale(model, m=8)    # a new model with 2(n - m) layers
    merged = sj.merge([a, b], method="slerp", t=0.5)
    sj.save_hf(model, "out_dir", dtype="bfloat16")
"""

import importlib

from solar_jax.host_malloc import reexec_with_hugepage_malloc

# Only for `python -m solar_jax.<command>` (checked against sys.orig_argv), never when
# solar_jax is imported by another program: see host_malloc.
reexec_with_hugepage_malloc()

# Attributes load lazily (PEP 562): `python -m solar_jax.upscale` must not find its own
# module already imported by the package, and commands import only what they use.
_EXPORTS = {
    "ModelConfig": "solar_jax.model_config",
    "SolarError": "solar_jax.errors",
    "Transformer": "solar_jax.model",
    "depth_up_scale": "solar_jax.upscale",
    "generate": "solar_jax.generate",
    "load_hf": "solar_jax.hf",
    "merge": "solar_jax.merge",
    "save_hf": "solar_jax.hf",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'solar_jax' has no attribute {name!r}")


def __dir__():
    return __all__
