"""python -m solar_jax.seam: where to cut a model for depth up-scaling, measured on text.

Writes the angular distance between every pair of layer inputs (a heatmap), how much each
layer changes the residual stream, SOLAR's seam mismatch for every m, and the seam with the
smallest mismatch for a target depth (solar_jax/surgery/seam.py).

  python -m solar_jax.seam --config=configs/seam.py --config.model_dir=HF_DIR --config.output_dir=OUT
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.pipelines.seam import run


def main(c) -> None:
    run(c)


if __name__ == "__main__":
    cli.run(main, "seam.py")
