"""Contamination checks: n-gram overlap (always), neighbourhood test and Min-K% (with a model).

  python -m solar_jax.contamination --config.train_files='data/*.jsonl' \
      --config.benchmark_files=benchmarks/gsm8k.jsonl --config.model_dir=HF_DIR
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.train_files = ""
    c.text_field = "text"
    c.benchmark_files = ""
    c.n = 13
    c.model_dir = ""  # enables the neighbourhood test and Min-K% Prob
    c.num_neighbours = 10
    c.min_k = 0.2
    c.limit = 200  # benchmark items for the model checks (0: all)
    c.batch_size = 8
    c.max_len = 512
    c.seed = 0
    c.output_json = ""
    return c
