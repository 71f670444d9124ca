"""python -m solar_jax.upscale: depth up-scaling of an HF dir (or a run dir) into an HF dir.

  python -m solar_jax.upscale --config.model_dir=HF_DIR --config.m=8 --config.output_dir=OUT
  python -m solar_jax.upscale --config.model_dir=A,B --config.slices=0:16@0,8:32@1 --config.output_dir=OUT
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.surgery.streaming import upscale_hf
from solar_jax.surgery.upscale import check_init, passthrough_params, resolve_slices, solar_slices
from solar_jax.training import runs
from solar_jax.weights import hf, paths
from solar_jax.weights.outdir import check_output_dir


def main(c) -> None:
    models = cli.split_list(c.model_dir)
    if not models:
        raise SolarError("model_dir is required (--config.model_dir=HF_DIR)")
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    check_output_dir(c.output_dir, c.overwrite)
    check_init(c.init)  # one line before anything is read
    models = [str(paths.local_copy(m)) for m in models]  # gs:// inputs: local copies
    n = runs.model_config_of(models[0]).num_layers
    slices = resolve_slices(c.slices, n) if c.slices else solar_slices(n, c.m)
    if any(runs.is_run_dir(m) for m in models):  # training runs: up-scale their checkpoints in memory
        loaded = [runs.load_params_any(m) for m in models]
        params, config = passthrough_params([p for p, _, _ in loaded], [cfg for _, cfg, _ in loaded], slices, c.init)
        out = hf.save_hf_params(params, config, c.output_dir, dtype=c.dtype or "float32",
                                max_shard_size=c.max_shard_size, source_dir=loaded[slices[0].model][2],
                                overwrite=c.overwrite)
    else:
        out = upscale_hf(models, slices, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size,
                         overwrite=c.overwrite, init=c.init)
    layers = sum(s.end - s.start for s in slices)
    print(f"wrote {out}: {layers} layers from slices {', '.join(f'{s.start}:{s.end}@{s.model}' for s in slices)}, "
          f"init {c.init}")


if __name__ == "__main__":
    cli.run(main, "upscale.py")
