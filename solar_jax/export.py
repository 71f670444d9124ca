"""python -m solar_jax.export: a training run's checkpoint -> an HF dir that transformers loads.

  python -m solar_jax.export --config.workdir=RUN_DIR --config.output_dir=OUT [--config.step=N] \\
      [--config.dtype=bfloat16]
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.training import runs
from solar_jax.training.runs import load_run_params
from solar_jax.weights import hf
from solar_jax.weights.outdir import check_output_dir


def main(c) -> None:
    if not c.workdir or not c.output_dir:
        raise SolarError("workdir and output_dir are required (--config.workdir=RUN --config.output_dir=OUT)")
    check_output_dir(c.output_dir, c.overwrite)
    hf.export_dtype(c.dtype)
    params, config, record, step = load_run_params(c.workdir, None if c.step < 0 else c.step)
    out = hf.save_hf_params(params, config, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size,
                            source_dir=runs.source_dir(record), overwrite=c.overwrite)
    print(f"wrote {out} from step {step} of {c.workdir}")


if __name__ == "__main__":
    cli.run(main, "export.py")
