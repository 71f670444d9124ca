"""Direct preference optimisation (SOLAR's alignment stage) on {prompt, chosen, rejected}.

  # CPU default: the SFT model on Synth. Math-Alignment (chosen = rephrased answer,
  # rejected = original), sigmoid loss, beta 0.1, frozen reference copy
  python -m solar_jax.train --config=configs/dpo.py --config.model_dir=runs/sft/hf
  # reference log-probs computed once instead of a second model in memory:
  python -m solar_jax.train --config=configs/dpo.py ... --config.dpo.reference=precomputed
  # two candidates, then merge them (SOLAR): configs/merge.py with method=slerp or linear
"""

from solar_jax.training.run_config import base_config, check_variant, solar_variant, tiny_variant

VARIANTS = ("default", "tiny", "solar")


def get_config(arg=None):
    variant = arg or "default"
    check_variant(variant, VARIANTS)
    c = base_config()
    c.task = "dpo"
    c.template = "solar"
    c.workdir = "runs/dpo"
    c.data.builtin = "synth_math"
    c.data.num_builtin = 1000
    c.num_steps = 30
    c.batch_size = 4  # pairs
    c.seq_len = 192
    c.learning_rate = 5e-6
    c.warmup_steps = 3
    c.weight_decay = 0.0
    c.checkpoint_every = 15
    c.eval_every = 15
    c.eval_batches = 8
    if variant == "tiny":
        tiny_variant(c, "runs/dpo-tiny")
        c.num_steps, c.seq_len, c.learning_rate = 10, 320, 1e-3
        c.checkpoint_every = c.eval_every = 5
        c.data.num_builtin = 200
    elif variant == "solar":
        # Fits v5p-128 as is; v4-128 needs --config.remat=full; 256-chip slices need 256 pairs
        # and remat full: --config.batch_size=256 --config.remat=full (docs/results/defaults).
        solar_variant(c, "runs/solar-dpo")
        c.num_steps, c.batch_size = 1000, 128
        c.learning_rate, c.warmup_steps = 5e-7, 50
        c.dpo.reference = "precomputed"  # the 10.7B policy and reference need not both sit in memory
        c.checkpoint_every = c.eval_every = 100
    return c
