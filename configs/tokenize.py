"""Tokenize a corpus once into ArrayRecord shards (solar_jax.tokenize); train on them with
--config.data.train_files=TOKENS (a shard dir is recognised by its manifest.json).

  python -m solar_jax.tokenize --config=configs/tokenize.py --config.data_files='corpus/*.jsonl' \
      --config.model_dir=HF_DIR --config.output_dir=TOKENS
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.data_files = ""  # .txt/.jsonl/.parquet files or globs, comma-separated; "" = the built-in corpus
    c.builtin = "pydoc"
    c.text_field = "text"
    c.model_dir = ""  # whose tokenizer; "" = the real model's
    c.tokenizer = ""  # or a tokenizer dir, a sentencepiece .model, or "bytes"
    c.add_bos = True  # as the training run's data.add_bos / add_eos (checked when it reads them)
    c.add_eos = True
    c.documents_per_shard = 50_000
    c.num_workers = 0  # tokenizing processes; 0 = one per CPU
    c.output_dir = ""
    c.overwrite = False
    return c
