"""Instruction tuning (SOLAR's SFT stage), loss on response tokens only.

  # CPU default: the real model on Synth. Math-Instruct (generated, seeded), SOLAR's template
  python -m solar_jax.train --config=configs/sft.py --config.model_dir=runs/cpt/hf
  # your data: Alpaca {instruction, input, output}, {prompt, completion} or chat {messages}
  python -m solar_jax.train --config=configs/sft.py --config.model_dir=HF_DIR \
      --config.data.train_files='sft/*.jsonl' --config.template=chat
  # the sequence: cpt -> sft -> dpo (configs/dpo.py) -> merge (configs/merge.py)
"""

from solar_jax.training.run_config import base_config, check_variant, solar_variant, tiny_variant

VARIANTS = ("default", "tiny", "solar")


def get_config(arg=None):
    variant = arg or "default"
    check_variant(variant, VARIANTS)
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
        tiny_variant(c, "runs/sft-tiny")
        c.num_steps = 10
        c.checkpoint_every = c.eval_every = 5
        c.data.num_builtin = 200
    elif variant == "solar":
        # Fits v5p-128 and v6e-256 as is; v4-128 and v5e-256 need --config.remat=full
        # (docs/results/defaults).
        solar_variant(c, "runs/solar-sft")
        c.num_steps, c.batch_size = 2000, 256
        c.learning_rate, c.warmup_steps = 1e-5, 100
        c.checkpoint_every = c.eval_every = 200
    return c
