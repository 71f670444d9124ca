"""Run directories as weight sources: a run's record (run.json) and its checkpoints.

A run dir holds run.json (the model config, its source, the run config) and checkpoints/;
up-scaling, merging, evaluation and export take one wherever they take an HF dir. A gs://
run dir (or HF dir) is read from a local copy (weights/paths.py); run.json records a
remote model_dir as its URL, resolved again where its tokenizer files are needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.parallel import sharding
from solar_jax.training.checkpoint import Checkpointer
from solar_jax.training.state import state_layout
from solar_jax.weights import hf, paths

RUN_FILE = "run.json"


def is_run_dir(path: str | Path) -> bool:
    if paths.is_remote(path):
        url = str(path).rstrip("/")
        return paths.is_file(f"{url}/{RUN_FILE}") and paths.exists(f"{url}/checkpoints")
    return (Path(path) / RUN_FILE).is_file() and (Path(path) / "checkpoints").is_dir()


def source_dir(record: dict[str, Any]) -> str | None:
    """The run's model_dir (its tokenizer files), a local copy if it is remote."""
    model_dir = record.get("model_dir")
    return str(paths.local_copy(model_dir)) if model_dir and paths.is_remote(model_dir) else model_dir


def run_record(model_config: ModelConfig, model_dir: str | None, c) -> dict[str, Any]:
    """What run.json records: the trained model's config, its source, the run config."""
    return dict(model_config=model_config.to_hf_config(), model_dir=model_dir, tokenizer=c.tokenizer,
                config=json.loads(c.to_json_best_effort()))


def read_run_record(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SolarError(f"{path} is unreadable ({'empty' if not path.stat().st_size else e}): it records which "
                         "model the run trains; restore it, or use another workdir") from None
    if not isinstance(record, dict) or "model_config" not in record:
        raise SolarError(f"{path} is not a solar_jax run record (no model_config); use another workdir")
    return record


def model_config_of(path: str | Path) -> ModelConfig:
    """The model config of an HF dir or a run dir."""
    path = paths.local_copy(str(path))
    if is_run_dir(path):
        return ModelConfig.from_hf_config(read_run_record(path)["model_config"])
    return ModelConfig.from_hf_config(hf.read_hf_config(path))


def load_run_params(workdir: str | Path, step: int | None = None) -> tuple[dict, ModelConfig, dict[str, Any], int]:
    """(params, model config, run record, step) from a solar_jax run's checkpoint (host memory)."""
    workdir = paths.local_copy(str(workdir))
    if not is_run_dir(workdir):
        raise SolarError(f"{workdir} is not a solar_jax run directory (no {RUN_FILE} and checkpoints/)")
    record = read_run_record(workdir)
    config = ModelConfig.from_hf_config(record["model_config"])
    run_config = ml_collections.ConfigDict(record["config"])
    # The run's state layout, on one device of this process: host memory, any topology.
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
    abstract = state_layout(run_config, config, mesh).abstract
    ckpt = Checkpointer(workdir / "checkpoints")
    if step is not None and step not in ckpt.all_steps():
        raise SolarError(f"no checkpoint at step {step} in {workdir} (have: {ckpt.all_steps()})")
    restored_step, state, _ = ckpt.restore(abstract, None, step)
    ckpt.close()
    return state["params"], config, record, restored_step


def load_params_any(path: str) -> tuple[dict, ModelConfig, str | None]:
    """An HF dir or a run dir (its latest checkpoint) -> (params, config, tokenizer source)."""
    path = str(paths.local_copy(path))
    if is_run_dir(path):
        params, config, record, _ = load_run_params(path)
        return params, config, source_dir(record)
    config = ModelConfig.from_hf_config(hf.read_hf_config(path))
    return hf.load_hf_params(path, config), config, path
