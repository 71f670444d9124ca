"""python -m solar_jax.convert: HF dir -> solar_jax params -> HF dir (dtype, shards).

  python -m solar_jax.convert --config.model_dir=HF_DIR --config.output_dir=OUT [--config.dtype=bfloat16]
"""

from __future__ import annotations

import time

from solar_jax import cli
from solar_jax.weights.convert import convert


def main(c) -> None:
    start = time.perf_counter()
    out = convert(c.model_dir, c.output_dir, c.dtype, c.max_shard_size, c.overwrite)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    cli.run(main, "convert.py")
