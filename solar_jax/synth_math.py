"""python -m solar_jax.synth_math: SOLAR's synthetic math sets (Math-Instruct, Math-Alignment) as JSONL.

  python -m solar_jax.synth_math --config.output_dir=data/synth_math [--config.num_train=2000]
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.data.synth_math import write_sets


def main(c) -> None:
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    out = write_sets(c.output_dir, c.num_train, c.num_eval, c.seed, c.overwrite)
    print(f"wrote {out}: {c.num_train} training and {c.num_eval} held-out problems (seed {c.seed})")


if __name__ == "__main__":
    cli.run(main, "synth_math.py")
