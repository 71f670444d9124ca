"""The paper's claims about depth up-scaling and merging, at small scale (solar_jax.reproduce).

  python -m solar_jax.reproduce --config=configs/reproduce.py --config.recipe_dir=runs/recipe \
      --config.output_dir=runs/reproduce

recovery + seam: continued pretraining of SmolLM2-135M (n = 30) up-scaled with each m in
seam_m (8: SOLAR's, drop the 2m middle layers; 0: plain duplication, 2n layers), then the
arms at compare_m's depth (2(n - m) layers): identity and scaled inits, the seam the
diagnostic (solar_jax.seam) recommends, and LLaMA Pro with n - 2m identity blocks (all
trained, or only the new ones); same steps, batch and data; held-out loss every eval_every
steps against the base model's, and the base's seam mismatch against each m's recovery.
merging: Average(a, 1 - a) of the recipe's two DPO candidates for each a in average_weights,
and SLERP at slerp_t, scored like the recipe's stages.

merge_gain (:merge_gain, :merge_gain_quick; pipelines/merge_gain.py): candidates trained
apart from one base, A on Synth. Math-Instruct and B on Python-docs QA, merged by every
method and scored on both skills:

  python -m solar_jax.reproduce --config=configs/reproduce.py:merge_gain --config.output_dir=runs/merge_gain
"""

import ml_collections

VARIANTS = ("default", "quick", "merge_gain", "merge_gain_quick")


def merge_gain_config(quick: bool) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.section = "merge_gain"
    c.output_dir = "runs/merge-gain-quick" if quick else "runs/merge-gain"
    c.overwrite = False
    c.model_dir = ""  # the base both candidates start from (a continued-pretrained model); "" = the real model
    c.seed = 0
    c.template = "solar"
    c.seq_len = 192  # Synth. Math-Instruct and docs QA rows are ~60-150 tokens
    c.num_builtin = 1000  # Synth. Math-Instruct problems (a tenth more held out)
    c.docs_eval_fraction = 0.1
    # Both candidates: SFT from the base with the same steps, batch and rate; a rate well
    # above configs/sft.py's so that they move apart.
    c.sft = ml_collections.ConfigDict(dict(num_steps=80, batch_size=4, learning_rate=1e-4, warmup_steps=4))
    c.dpo_a = ml_collections.ConfigDict(dict(num_steps=0, batch_size=2, learning_rate=5e-6, warmup_steps=2))
    c.average_weights = "0,0.25,0.5,0.75,1"
    c.slerp_t = "0.25,0.5,0.75"
    c.task_arithmetic_weights = "0.75,1"  # w = 0.5 is Average(0.5, 0.5) exactly
    c.densities = "0.3,0.7"  # TIES, DARE-TIES, DARE-linear
    c.keep_threshold = 0.8
    c.eval = ml_collections.ConfigDict(dict(examples=32, math_problems=16, max_new_tokens=64, batch_size=8))
    if quick:  # CI: every artefact, numbers meaningless
        c.sft.update(num_steps=2, batch_size=2, warmup_steps=1)
        c.dpo_a.update(num_steps=1, batch_size=2, warmup_steps=1)
        c.num_builtin = 40
        c.average_weights, c.slerp_t, c.task_arithmetic_weights, c.densities = "0,0.5,1", "0.5", "1", "0.5"
        c.eval.update(examples=4, math_problems=2, max_new_tokens=8, batch_size=4)
    return c


def get_config(arg=None):
    variant = arg or "default"
    if variant.startswith("merge_gain"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        return merge_gain_config(quick=variant.endswith("quick"))
    c = ml_collections.ConfigDict()
    c.section = "recovery"
    c.output_dir = "runs/reproduce"
    c.overwrite = False
    c.model_dir = ""  # "" = the real model
    c.recipe_dir = ""  # a finished recipe run (its dpo_a/ and dpo_b/); "" skips the merging part
    c.seam_m = "0,2,4,6,8,10,12"
    c.compare_m = 8
    c.arms = "identity,scaled,seam,llama_pro,llama_pro_new"  # "" = the m sweep only
    # The seam diagnostics of the base (configs/seam.py's keys).
    c.diagnostic = ml_collections.ConfigDict(dict(data_files="", text_field="text", builtin="pydoc",
                                                  num_sequences=64, seq_len=256, batch_size=16))
    # m = 8 passes the base within ~8 steps here: evaluate often, train briefly.
    c.cpt = ml_collections.ConfigDict(dict(num_steps=40, batch_size=4, seq_len=128, learning_rate=1e-4,
                                           warmup_steps=4, eval_every=4, eval_batches=6))
    c.average_weights = "0,0.25,0.5,0.75,1"
    c.slerp_t = 0.5
    c.eval = ml_collections.ConfigDict(dict(loss_batches=8, math_problems=16, pairs=30, max_new_tokens=64,
                                            batch_size=8, num_builtin=300))
    if variant == "quick":
        c.output_dir = "runs/reproduce-quick"
        c.seam_m = "8,0"
        c.arms = "identity,seam"
        c.diagnostic.update(num_sequences=4, seq_len=64, batch_size=4)
        c.cpt.update(num_steps=2, batch_size=2, seq_len=64, warmup_steps=1, eval_every=1, eval_batches=1)
        c.average_weights = "0,0.5,1"
        c.eval.update(loss_batches=1, math_problems=2, pairs=2, max_new_tokens=8, batch_size=2, num_builtin=16)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return c
