"""Benchmarks: solar_jax against its peer, measured in the same run, printed as ratios.

    python -m solar_jax.bench --config=configs/bench.py:NAME [--config.key=value ...]

NAME: convert (vs transformers), upscale and merge (vs mergekit), train (vs transformers +
torch AdamW), dpo (frozen vs precomputed reference), eval (vs lm-eval's hf model), plan
(the memory planner vs XLA's compiled memory analysis); configs/bench.py lists each one's
keys. Every side runs in its own process: solar_jax's in worker.py, the peers' in
peers.py, a script that never imports solar_jax.
"""
