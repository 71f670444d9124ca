"""The merge command's work, shared by the command and the pipelines that merge (the
merge-gain arm): configs/merge.py's keys -> (model dirs, MergeSpec), and merging those dirs
(streamed when every input is an HF dir; in memory when a training run dir is among them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from solar_jax.config_files import floats, split_list
from solar_jax.errors import SolarError
from solar_jax.surgery.merge import TASK_ARITHMETIC, MergeSpec, merge_params
from solar_jax.surgery.streaming import merge_hf
from solar_jax.training import runs
from solar_jax.weights import hf, paths


def _setting(text: str, what: str) -> float | list[float]:
    values = floats(text, what)
    return values[0] if len(values) == 1 else values


def spec_from_config(c) -> tuple[list[str], MergeSpec]:
    """configs/merge.py fields -> (model dirs, MergeSpec)."""
    dirs = split_list(c.model_dir)
    if c.base and c.base not in dirs:
        dirs = [c.base] + dirs
    base = dirs.index(c.base) if c.base else None
    others = [i for i in range(len(dirs)) if i != base]
    weights = floats(c.weights, "weights") if c.weights else None
    if weights is not None and len(weights) != len(others):
        raise SolarError(f"{len(weights)} weights for {len(others)} models (the base takes none)")
    model_params: list[dict[str, Any]] = [{} for _ in dirs]
    for k, i in enumerate(others):
        if weights is not None:
            model_params[i]["weight"] = weights[k]
        elif c.method in TASK_ARITHMETIC:
            model_params[i]["weight"] = 1.0
        if c.density:
            model_params[i]["density"] = _setting(c.density, "density")
    params: dict[str, Any] = {}
    if c.method == "slerp":
        filters = [{"filter": f, "value": _setting(v, f"t_{f}")}
                   for f, v in (("self_attn", c.t_self_attn), ("mlp", c.t_mlp)) if v]
        t = _setting(c.t, "t")
        params["t"] = filters + [{"value": t}] if filters else t
    if c.normalize is not None:
        params["normalize"] = c.normalize
    return dirs, MergeSpec(c.method, len(dirs), base=base, params=params, model_params=model_params, seed=c.seed)


def with_numerics(spec: MergeSpec | None, numerics: str) -> MergeSpec | None:
    """spec with configs/merge.py's numerics (checked: an unknown name is one line)."""
    return None if spec is None else dataclasses.replace(spec, numerics=numerics)


def merge_dirs(model_dirs: Sequence[str], spec: MergeSpec, output_dir: str, *, dtype: str = "",
               max_shard_size: str = "5GB", overwrite: bool = False, progress: bool = True):
    """Streams when every input is an HF dir; with a run dir among them, merges in memory.
    gs:// inputs are read from local copies (weights/paths.py)."""
    model_dirs = [str(paths.local_copy(d)) for d in model_dirs]
    if not any(runs.is_run_dir(d) for d in model_dirs):
        return merge_hf(model_dirs, spec, output_dir, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite,
                        progress=progress)
    loaded = [runs.load_params_any(d) for d in model_dirs]
    params = merge_params([p for p, _, _ in loaded], [cfg for _, cfg, _ in loaded], spec)
    ref = spec.base if spec.base is not None else 0
    return hf.save_hf_params(params, loaded[ref][1], output_dir, dtype=dtype or "float32",
                             max_shard_size=max_shard_size, source_dir=loaded[ref][2], overwrite=overwrite)
