"""python -m solar_jax.recipe: the whole SOLAR recipe on the real model, one command.

  python -m solar_jax.recipe --config=configs/recipe.py[:quick] --config.output_dir=OUT
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.pipelines.recipe import run_recipe


def main(c) -> None:
    run_recipe(c)


if __name__ == "__main__":
    cli.run(main, "recipe.py", hugepage_malloc=True)
