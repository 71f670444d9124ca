"""solar_jax: the SOLAR recipe (depth up-scaling, training, merging) in JAX/Flax."""
