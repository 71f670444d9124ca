"""python -m solar_jax.merge: merges HF dirs (or training run dirs) into an HF dir, mergekit's way.

  python -m solar_jax.merge --config.method=slerp --config.model_dir=A,B --config.t=0.5 --config.output_dir=OUT
  python -m solar_jax.merge --config.method=ties --config.base=BASE --config.model_dir=A,B \\
      --config.weights=0.5,0.5 --config.density=0.5 --config.output_dir=OUT
  python -m solar_jax.merge --config.yaml=mergekit_style.yaml --config.output_dir=OUT

HF dirs are streamed tensor by tensor; with a run dir among the inputs, the runs'
checkpoints are merged in memory (no round trip through HF files).
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.pipelines.merging import merge_dirs, spec_from_config, with_numerics
from solar_jax.surgery import mergekit_yaml
from solar_jax.surgery.streaming import upscale_hf
from solar_jax.weights.outdir import check_output_dir


def main(c) -> None:
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    check_output_dir(c.output_dir, c.overwrite)
    if c.yaml:
        plan = mergekit_yaml.read_yaml(c.yaml)
        plan.spec = with_numerics(plan.spec, c.numerics)
        dtype = plan.dtype or c.dtype
        if plan.method == "passthrough":
            out = upscale_hf(plan.model_dirs, plan.slices, c.output_dir, dtype=dtype,
                             max_shard_size=c.max_shard_size, overwrite=c.overwrite)
        else:
            out = merge_dirs(plan.model_dirs, plan.spec, c.output_dir, dtype=dtype,
                             max_shard_size=c.max_shard_size, overwrite=c.overwrite)
        print(f"wrote {out} ({plan.method} of {len(plan.model_dirs)} models)")
        return
    dirs, spec = spec_from_config(c)
    spec = with_numerics(spec, c.numerics)
    out = merge_dirs(dirs, spec, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size,
                     overwrite=c.overwrite)
    print(f"wrote {out} ({spec.method} of {len(dirs)} models)")


if __name__ == "__main__":
    cli.run(main, "merge.py")
