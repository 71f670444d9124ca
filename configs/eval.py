"""Benchmark scores (lm-eval definitions) on local task files; several models side by side.

  python -m solar_jax.evaluate --config=configs/eval.py --config.model_dir=HF_DIR_OR_RUN_DIR \
      --config.tasks=arc_challenge,hellaswag,mmlu,truthfulqa_mc2,winogrande,gsm8k --config.data_dir=benchmarks/
  # compare stages: --config.model_dir=base_hf,upscaled_hf,runs/cpt
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model_dir = ""  # comma-separated: HF dirs or solar_jax run dirs
    c.tasks = ""
    c.data_dir = "benchmarks"  # {task}.jsonl and {task}_train.jsonl (few-shot source)
    c.num_fewshot = -1  # -1: each task's standard count; applies to few-shot tasks only
    c.batch_size = 8
    c.max_len = 0  # 0: min(model max positions, 2048)
    c.limit = 0  # rows per task (0: all)
    c.seed = 1234  # few-shot sampling
    c.dtype = "float32"
    c.output_json = ""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # as in training
    return c
