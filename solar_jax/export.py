"""python -m solar_jax.export: a training run's checkpoint -> an HF dir that transformers loads.

  python -m solar_jax.export --config.workdir=RUN_DIR --config.output_dir=OUT [--config.step=N] \
      [--config.dtype=bfloat16]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from solar_jax import hf
from solar_jax.errors import SolarError
from solar_jax.model_config import ModelConfig
from solar_jax.outdir import check_output_dir


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file() and (Path(path) / "checkpoints").is_dir()


def load_run_params(workdir: str | Path, step: int | None = None) -> tuple[dict, ModelConfig, dict[str, Any], int]:
    """(params, model config, run record, step) from a solar_jax run's checkpoint (host memory)."""
    from solar_jax import sharding
    from solar_jax.checkpoint import Checkpointer
    from solar_jax.train import abstract_state

    workdir = Path(workdir)
    if not is_run_dir(workdir):
        raise SolarError(f"{workdir} is not a solar_jax run directory (no run.json and checkpoints/)")
    record = json.loads((workdir / "run.json").read_text())
    config = ModelConfig.from_hf_config(record["model_config"])
    run_config = ml_collections.ConfigDict(record["config"])
    # The run's state layout, on one device of this process: host memory, any topology.
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
    *_, abstract = abstract_state(run_config, config, mesh)
    ckpt = Checkpointer(workdir / "checkpoints")
    if step is not None and step not in ckpt.all_steps():
        raise SolarError(f"no checkpoint at step {step} in {workdir} (have: {ckpt.all_steps()})")
    restored_step, state, _ = ckpt.restore(abstract, None, step)
    ckpt.close()
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
