"""python -m solar_jax.convert: HF dir -> solar_jax params -> HF dir (dtype, shards)."""

from __future__ import annotations

from pathlib import Path

from solar_jax.weights import hf, paths
from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.weights.outdir import check_output_dir


def source_dtype(hf_config: dict) -> str:
    name = str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32")
    return name if name in hf.EXPORT_DTYPES else "float32"


def convert(model_dir: str, output_dir: str, dtype: str = "", max_shard_size: str = "5GB",
            overwrite: bool = False) -> Path:
    """Checks everything cheap first (dirs, dtype, sizes, config), then streams the weights."""
    if not output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    if not model_dir:
        raise SolarError("model_dir is required (--config.model_dir=HF_DIR)")
    check_output_dir(output_dir, overwrite)
    model_dir = str(paths.local_copy(model_dir))  # a gs:// HF dir: read from a local copy
    hf_config = hf.read_hf_config(model_dir)
    dtype = dtype or source_dtype(hf_config)
    hf.export_dtype(dtype)
    hf.parse_size(max_shard_size)
    config = ModelConfig.from_hf_config(hf_config)
    params = hf.load_hf_params(model_dir, config)
    return hf.save_hf_params(params, config, output_dir, dtype=dtype, max_shard_size=max_shard_size,
                             source_dir=model_dir, overwrite=overwrite)
