"""Continued pretraining: SOLAR's recovery stage after depth up-scaling.

  # CPU default (minutes): SmolLM2-135M-Instruct up-scaled 30 -> 44 layers (m=8), built-in corpus
  python -m solar_jax.train --config=configs/cpt.py
  # tiny random model with a byte tokenizer (tests, smoke runs: seconds)
  python -m solar_jax.train --config=configs/cpt.py:tiny --config.workdir=/tmp/tiny
  # SOLAR at pod scale: Mistral-7B weights -> 48 layers, bf16 compute, FSDP over the slice
  python -m solar_jax.train --config=configs/cpt.py:solar --config.model_dir=MISTRAL_7B_HF \
      --config.data.train_files='gs://bucket/corpus/*.jsonl' --config.workdir=gs://bucket/runs/solar-cpt
"""

from solar_jax.training.run_config import base_config

VARIANTS = ("default", "tiny", "solar")


def get_config(arg=None):
    variant = arg or "default"
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
    if variant == "default":
        pass
    elif variant == "tiny":
        c.model_preset = "tiny"
        c.tokenizer = "bytes"
        c.upscale_m = 1  # 4 -> 6 layers
        c.workdir = "runs/cpt-tiny"
        c.num_steps = 20
        c.batch_size = 8
        c.seq_len = 64
        c.learning_rate = 3e-3
        c.warmup_steps = 2
        c.checkpoint_every = 10
        c.eval_every = 10
        c.eval_batches = 2
    elif variant == "solar":
        # SOLAR 10.7B: 32 -> 48 layers. Global batch 1024 x 4096 tokens = 4M tokens/step.
        c.workdir = "runs/solar-cpt"
        c.num_steps = 20000
        c.batch_size = 1024
        c.seq_len = 4096
        c.learning_rate = 3e-5
        c.warmup_steps = 500
        c.dtype = "bfloat16"
        c.remat = "dots_no_batch"
        # 4 microbatches of 4 rows per chip: 72.4 GiB of a v5p chip's 95 with splash attention,
        # compiled by libtpu (python -m solar_jax.plan --config=configs/cpt.py:solar
        # --config.model_preset=mistral-7b --device=v5p-128 --compile); one batch of 16 rows
        # would need ~273 GiB. --config.scan_unroll=48 (the layer loop unrolled): 73.2 GiB and
        # an estimated 6.2% shorter step by XLA's cost model alone (under the earlier libtpu
        # flags), at a 6x longer compile; the config keeps the loop. Other slices (libtpu
        # compiles, docs/results/tpu-2026-12-05/bench-tpu-per-slice.txt): v6e-256 as is (19.0
        # GiB of 32); v4-128 --config.remat=full --config.grad_accum_steps=2 (27.5 of 32);
        # v5e-256 --config.remat=full --config.grad_accum_steps=1 (11.8 of 16).
        c.grad_accum_steps = 4
        c.mesh.data = 1
        c.mesh.fsdp = -1
        c.checkpoint_every = 500
        c.eval_every = 500
        c.eval_batches = 16
        c.data.num_threads = 16
        c.data.prefetch = 128
        c.export.dtype = "bfloat16"
    else:
        raise ValueError(f"unknown variant {variant!r}; known: default, tiny, solar")
    return c
