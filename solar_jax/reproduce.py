"""python -m solar_jax.reproduce: the paper's claims at small scale (recovery, the seam, merging).

  python -m solar_jax.reproduce --config=configs/reproduce.py --config.recipe_dir=RECIPE_OUT --config.output_dir=OUT
  python -m solar_jax.reproduce --config=configs/reproduce.py:merge_gain --config.output_dir=OUT
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.pipelines import merge_gain, reproduce


def main(c) -> None:
    # configs/reproduce.py:merge_gain[_quick] selects the merge-gain arm; the rest is one run.
    (merge_gain.run if c.get("section") == "merge_gain" else reproduce.run)(c)


if __name__ == "__main__":
    cli.run(main, "reproduce.py", hugepage_malloc=True)
