"""python -m solar_jax.export: a training run's checkpoint -> an HF dir that transformers loads.

  python -m solar_jax.export --config.workdir=RUN_DIR --config.output_dir=OUT [--config.step=N] \
      [--config.dtype=bfloat16]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from solar_jax import hf
from solar_jax import model as model_lib
from solar_jax.errors import SolarError
from solar_jax.model_config import ModelConfig
from solar_jax.outdir import check_output_dir


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file() and (Path(path) / "checkpoints").is_dir()


def load_run_params(workdir: str | Path, step: int | None = None) -> tuple[dict, ModelConfig, dict[str, Any], int]:
    """(params, model config, run record, step) from a solar_jax run's checkpoint (host memory)."""
    import optax

    from solar_jax.checkpoint import Checkpointer
    from solar_jax.optim import make_optimizer

    workdir = Path(workdir)
    if not is_run_dir(workdir):
        raise SolarError(f"{workdir} is not a solar_jax run directory (no run.json and checkpoints/)")
    record = json.loads((workdir / "run.json").read_text())
    config = ModelConfig.from_hf_config(record["model_config"])
    run_config = ml_collections.ConfigDict(record["config"])
    shapes = hf.param_shapes(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = model_lib.unflatten_params(
        {p: jax.ShapeDtypeStruct(s, jnp.float32, sharding=device) for p, s in shapes.items()})
    tx = make_optimizer(run_config, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    abstract_opt = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_opt)
    abstract_state = dict(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=device), params=abstract_params,
                          opt_state=abstract_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=device))
    ckpt = Checkpointer(workdir / "checkpoints")
    if step is not None and step not in ckpt.all_steps():
        raise SolarError(f"no checkpoint at step {step} in {workdir} (have: {ckpt.all_steps()})")
    restored_step, state, _ = ckpt.restore(abstract_state, None, step)
    ckpt.close()
    del optax
    return state["params"], config, record, restored_step


def main(argv) -> None:
    from absl import flags

    c = flags.FLAGS.config
    if not c.workdir or not c.output_dir:
        raise SolarError("workdir and output_dir are required (--config.workdir=RUN --config.output_dir=OUT)")
    check_output_dir(c.output_dir, c.overwrite)
    hf.export_dtype(c.dtype)
    params, config, record, step = load_run_params(c.workdir, None if c.step < 0 else c.step)
    out = hf.save_hf_params(params, config, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size,
                            source_dir=record.get("model_dir"), overwrite=c.overwrite)
    print(f"wrote {out} from step {step} of {c.workdir}")


if __name__ == "__main__":
    from solar_jax import cli

    cli.run(main, config_file="export.py")
