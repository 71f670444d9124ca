"""Instruction tuning (SOLAR's SFT stage), loss on response tokens only.

  # CPU default: the real model on Synth. Math-Instruct (generated, seeded), SOLAR's template
  python -m solar_jax.train --config=configs/sft.py --config.model_dir=runs/cpt/hf
  # your data: Alpaca {instruction, input, output}, {prompt, completion} or chat {messages}
  python -m solar_jax.train --config=configs/sft.py --config.model_dir=HF_DIR \
      --config.data.train_files='sft/*.jsonl' --config.template=chat
  # the sequence: cpt -> sft -> dpo (configs/dpo.py) -> merge (configs/merge.py)
"""

from solar_jax.training.run_config import base_config

VARIANTS = ("default", "tiny", "solar")


def get_config(arg=None):
    variant = arg or "default"
    c = base_config()
    c.task = "sft"
    c.template = "solar"
    c.workdir = "runs/sft"
    c.data.builtin = "synth_math"
    c.data.num_builtin = 1000
    c.num_steps = 40
    c.batch_size = 4
    c.seq_len = 256
    c.learning_rate = 2e-5
    c.warmup_steps = 4
    c.checkpoint_every = 20
    c.eval_every = 20
    c.eval_batches = 8
    if variant == "tiny":
        c.model_preset, c.tokenizer = "tiny", "bytes"
        c.workdir = "runs/sft-tiny"
        c.num_steps, c.batch_size, c.seq_len = 10, 8, 256
        c.learning_rate, c.warmup_steps = 3e-3, 2
        c.checkpoint_every = c.eval_every = 5
        c.eval_batches = 2
        c.data.num_builtin = 200
    elif variant == "solar":
        c.workdir = "runs/solar-sft"
        c.num_steps, c.batch_size, c.seq_len = 2000, 256, 4096
        c.learning_rate, c.warmup_steps = 1e-5, 100
        # v5p-128: 71.3 GiB of 95 per chip, v6e-256: 19.0 of 32 (libtpu compiles); v4-128 and
        # v5e-256 need --config.remat=full (16.1 of 32, 5.2 of 16; docs/results/tpu-2026-12-03).
        c.dtype, c.remat = "bfloat16", "dots_no_batch"
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.checkpoint_every = c.eval_every = 200
        c.export.dtype = "bfloat16"
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return c
