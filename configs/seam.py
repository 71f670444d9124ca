"""Seam diagnostics of one model (solar_jax.seam).

  python -m solar_jax.seam --config=configs/seam.py --config.model_dir=HF_DIR --config.output_dir=OUT
  # for a depth:   --config.target_layers=44   (or --config.m=8: SOLAR's 2(n - m) layers)
  # on your text:  --config.data_files=held_out/*.jsonl --config.text_field=text
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model_dir = ""  # an HF dir or a solar_jax run dir; "" = the real model (SmolLM2-135M)
    c.output_dir = "runs/seam"
    c.overwrite = False
    c.data_files = ""  # .txt/.jsonl/.parquet files or globs; "" = the built-in corpus
    c.text_field = "text"
    c.builtin = "pydoc"
    c.num_sequences = 64  # 256 moved no distance by more than 0.003 on SmolLM2, at 4x the time
    c.seq_len = 256
    c.batch_size = 16
    c.target_layers = 0  # the up-scaled depth to recommend a seam for; 0 = from m
    c.m = -1  # SOLAR's m (2(n - m) layers); -1 = n / 4, rounded (SOLAR: 8 of 32)
    c.dtype = "float32"
    return c
