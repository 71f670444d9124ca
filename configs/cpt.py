"""Continued pretraining: SOLAR's recovery stage after depth up-scaling.

  # CPU default (minutes): SmolLM2-135M-Instruct up-scaled 30 -> 44 layers (m=8), built-in corpus
  python -m solar_jax.train --config=configs/cpt.py
  # tiny random model with a byte tokenizer (tests, smoke runs: seconds)
  python -m solar_jax.train --config=configs/cpt.py:tiny --config.workdir=/tmp/tiny
  # SOLAR at pod scale: Mistral-7B weights -> 48 layers, bf16 compute, FSDP over the slice
  python -m solar_jax.train --config=configs/cpt.py:solar --config.model_dir=MISTRAL_7B_HF \
      --config.data.train_files='gs://bucket/corpus/*.jsonl' --config.workdir=gs://bucket/runs/solar-cpt
"""

from solar_jax.training.run_config import base_config, check_variant, solar_variant, tiny_variant

VARIANTS = ("default", "tiny", "solar")


def get_config(arg=None):
    variant = arg or "default"
    check_variant(variant, VARIANTS)
    c = base_config()
    c.workdir = "runs/cpt"
    c.upscale_m = 8
    c.num_steps = 60
    c.batch_size = 4
    c.seq_len = 128
    c.learning_rate = 1e-4
    c.warmup_steps = 6
    c.checkpoint_every = 20
    c.eval_every = 20
    c.eval_batches = 8
    if variant == "tiny":
        tiny_variant(c, "runs/cpt-tiny")
        c.upscale_m = 1  # 4 -> 6 layers
        c.num_steps, c.seq_len = 20, 64
        c.checkpoint_every = c.eval_every = 10
    elif variant == "solar":
        # SOLAR 10.7B: 32 -> 48 layers. Global batch 1024 x 4096 tokens = 4M tokens/step.
        solar_variant(c, "runs/solar-cpt")
        c.num_steps, c.batch_size = 20000, 1024
        c.learning_rate, c.warmup_steps = 3e-5, 500
        # 4 microbatches of 4 rows per chip: what fits a v5p chip (one batch of 16 rows does
        # not). Other slices: v6e-256 as is; v4-128 --config.remat=full
        # --config.grad_accum_steps=2; v5e-256 --config.remat=full --config.grad_accum_steps=1.
        # Check a slice with python -m solar_jax.plan --config=configs/cpt.py:solar
        # --config.model_preset=mistral-7b --device=v5p-128 --compile (figures:
        # docs/results/defaults).
        c.grad_accum_steps = 4
        c.checkpoint_every = c.eval_every = 500
        c.eval_batches = 16
        c.data.num_threads, c.data.prefetch = 16, 128
    return c
