"""python -m solar_jax.reproduce: the paper's claims at small scale (recovery, the seam, merging).

  python -m solar_jax.reproduce --config=configs/reproduce.py --config.recipe_dir=RECIPE_OUT --config.output_dir=OUT
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.pipelines.reproduce import run


def main(c) -> None:
    run(c)


if __name__ == "__main__":
    cli.run(main, "reproduce.py", hugepage_malloc=True)
