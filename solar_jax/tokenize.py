"""python -m solar_jax.tokenize: tokenize a corpus once into ArrayRecord shards that training
reads as data.train_files (solar_jax/data/token_shards.py).

  python -m solar_jax.tokenize --config=configs/tokenize.py --config.data_files='corpus/*.jsonl' \
      --config.model_dir=HF_DIR --config.output_dir=TOKENS
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.pipelines.tokenize import run


def main(c) -> None:
    run(c)


if __name__ == "__main__":
    cli.run(main, "tokenize.py")
