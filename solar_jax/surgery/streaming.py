"""Up-scaling and merging of HF directories, streamed tensor by tensor.

Each output tensor is produced when its turn comes (read from its source files, merged or
copied) and written straight into the output shards, so memory stays near the largest
tensors, not whole models. Output goes to a temporary sibling dir renamed at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.surgery.merge import MergeSpec, check_same_configs, layer_t, merge_stacks, validate_spec
from solar_jax.surgery.upscale import OUTPUT_PROJECTIONS, Slice, check_slices, layer_sources, output_scales
from solar_jax.weights import hf, paths
from solar_jax.weights.outdir import atomic_output_dir, check_output_dir, output_path


def open_models(model_dirs: Sequence[str]) -> tuple[list[ModelConfig], list[dict[str, Any]]]:
    """(configs, tensor readers by HF name) of HF dirs, checked against their key tables."""
    configs = [ModelConfig.from_hf_config(hf.read_hf_config(d)) for d in model_dirs]
    sources = [hf.checked_checkpoint(d, c)[0] for d, c in zip(model_dirs, configs)]
    return configs, sources


def write_streamed(output_dir: str, config: ModelConfig, dtype_name: str, side_dir: str,
                   specs: list[tuple[str, Any, tuple[int, ...]]], produce: Callable[[str], np.ndarray], *,
                   max_shard_size: str, overwrite: bool, progress: bool, desc: str) -> Path:
    """Writes config.json, the tokenizer files of `side_dir` and the tensors of `specs`
    ((HF name, dtype, shape) in file order, each made by produce(name)) to `output_dir`."""
    bar = tqdm(total=len(specs), desc=desc, unit="tensor", disable=not progress)
    try:
        with atomic_output_dir(output_dir, overwrite) as tmp:
            hf.write_config(tmp, config, dtype_name, side_dir)
            hf.copy_side_files(side_dir, tmp)
            hf.write_shards(tmp, specs, produce, hf.parse_size(max_shard_size), lambda _: bar.update())
    except BaseException:
        bar.leave = False  # a failure clears the bar: the error line stands alone
        raise
    finally:
        bar.close()
    return output_path(output_dir)


def upscale_hf(model_dirs: Sequence[str], slices: Sequence[Slice], output_dir: str, *, dtype: str = "",
               max_shard_size: str = "5GB", overwrite: bool = False, progress: bool = True,
               init: str = "copy") -> Path:
    """Writes the up-scaled model; tensor bytes are copied as they are unless `dtype` asks
    otherwise, or `init` scales a repeated layer's output projections (surgery/upscale.py)."""
    check_output_dir(output_dir, overwrite)
    model_dirs = [str(paths.local_copy(d)) for d in model_dirs]  # gs:// inputs: local copies
    configs, sources = open_models(model_dirs)
    config = check_slices(slices, configs)
    scales = output_scales(slices, init)
    tables = [{(k.param, k.layer): k for k in hf.key_table(c)} for c in configs]
    layer_from = layer_sources(slices)
    first, last = slices[0].model, slices[-1].model
    origin = {}  # output HF name -> (model index, source HF name)
    scale_of = {}  # output HF name -> factor, for scaled output projections
    for key in hf.key_table(config):
        if key.layer is not None:
            model_index, layer = layer_from[key.layer]
            if key.param in OUTPUT_PROJECTIONS and scales[key.layer] != 1.0:
                scale_of[key.hf_name] = scales[key.layer]
        else:
            model_index, layer = (first if key.param == "embed/embedding" else last), None
        origin[key.hf_name] = (model_index, tables[model_index][(key.param, layer)].hf_name)
    any_name = next(iter(origin.values()))[1]
    source_dtype = hf.dtype_name_of(sources[first][any_name].dtype(any_name))
    target = hf.export_dtype(dtype) if dtype else None
    specs = []
    for key in hf.key_table(config):
        model_index, name = origin[key.hf_name]
        specs.append((key.hf_name, target or sources[model_index][name].dtype(name), key.hf_shape))

    def produce(out_name: str) -> np.ndarray:
        model_index, name = origin[out_name]
        array = sources[model_index][name].read(name)
        if out_name in scale_of:  # in the tensor's own dtype (0 and 1/2 are exact in any)
            array = (array * np.asarray(scale_of[out_name], array.dtype)).astype(array.dtype)
        return array if target is None else array.astype(target)

    return write_streamed(output_dir, config, dtype or source_dtype, model_dirs[first], specs, produce,
                          max_shard_size=max_shard_size, overwrite=overwrite, progress=progress, desc="upscale")


def merge_hf(model_dirs: Sequence[str], spec: MergeSpec, output_dir: str, *, dtype: str = "",
             max_shard_size: str = "5GB", overwrite: bool = False, progress: bool = True) -> Path:
    """Merges HF dirs: reads one tensor of each model, writes the merged tensor."""
    check_output_dir(output_dir, overwrite)
    if len(model_dirs) != spec.num_models:
        raise SolarError(f"{len(model_dirs)} model dirs for a spec of {spec.num_models}")
    model_dirs = [str(paths.local_copy(d)) for d in model_dirs]  # gs:// inputs: local copies
    configs, sources = open_models(model_dirs)
    check_same_configs(configs, list(model_dirs))
    config = configs[0]
    validate_spec(spec, config)
    table = hf.key_table(config)
    ref = spec.base if spec.base is not None else 0
    first_name = table[0].hf_name
    dtype_name = dtype or hf.dtype_name_of(sources[ref][first_name].dtype(first_name))
    if spec.numerics == "mergekit" and not spec.math_dtype:  # mergekit computes in the merge's dtype
        spec = dataclasses.replace(spec, math_dtype=dtype_name)
    target = hf.export_dtype(dtype_name)
    by_name = {k.hf_name: k for k in table}

    def produce(name: str) -> np.ndarray:
        key = by_name[name]
        stacks = [src[name].read(name).astype(np.float32, copy=False).reshape((1,) + key.hf_shape)
                  for src in sources]
        t = layer_t(key.layer, config.num_layers, key.param)
        return merge_stacks(spec, stacks, [name], [t])[0].astype(target, copy=False)

    specs = [(k.hf_name, target, k.hf_shape) for k in table]
    return write_streamed(output_dir, config, dtype_name, model_dirs[ref], specs, produce,
                          max_shard_size=max_shard_size, overwrite=overwrite, progress=progress,
                          desc=f"merge ({spec.method})")
