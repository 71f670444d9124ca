"""Benchmarks: solar_jax against its peer, measured in the same run, printed as ratios.

    python -m solar_jax.bench convert [--repeats=3] [--model_dir=HF_DIR]
    python -m solar_jax.bench plan      (memory planner vs XLA's compiled memory analysis)
"""
