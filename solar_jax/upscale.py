"""Depth up-scaling: layer slices of one or more models, concatenated on the layer axis.

SOLAR: from an n-layer base drop the last m layers of one copy and the first m of the other,
s = 2(n - m) layers: slices [0, n-m) and [m, n). Embeddings come from the first slice's
model (the bottom copy), final norm and lm_head from the last slice's (the top copy), as in
mergekit's passthrough.

    python -m solar_jax.upscale --config=configs/upscale.py --config.model_dir=HF_DIR \
        --config.m=8 --config.output_dir=OUT
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
from tqdm import tqdm

from solar_jax import hf
from solar_jax import model as model_lib
from solar_jax.errors import SolarError
from solar_jax.model_config import ModelConfig
from solar_jax.outdir import atomic_output_dir, check_output_dir


@dataclasses.dataclass(frozen=True)
class Slice:
    """Layers [start, end) of input model `model` (an index into the list of models)."""

    start: int
    end: int
    model: int = 0


def solar_slices(n: int, m: int) -> list[Slice]:
    if not 0 <= m < n:
        raise SolarError(f"m must satisfy 0 <= m < n (n = {n} layers), got m = {m}")
    return [Slice(0, n - m), Slice(m, n)]


def parse_slices(text: str) -> list[Slice]:
    """'0:24,8:32' (model 0) or '0:24@0,8:32@1' (layers of models[0], then models[1])."""
    slices = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+):(\d+)(?:@(\d+))?", part)
        if not match:
            raise SolarError(f"cannot read slice {part!r}; expected start:end or start:end@model (end exclusive)")
        slices.append(Slice(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)))
    if not slices:
        raise SolarError("no slices given (example: 0:24,8:32)")
    return slices


def check_slices(slices: Sequence[Slice], configs: Sequence[ModelConfig]) -> ModelConfig:
    """Validates the slices against the input models; returns the output config."""
    if not slices:
        raise SolarError("no slices given")
    for s in slices:
        if not 0 <= s.model < len(configs):
            raise SolarError(f"slice {s.start}:{s.end}@{s.model} names model {s.model}, but {len(configs)} given")
        n = configs[s.model].num_layers
        if not 0 <= s.start < s.end <= n:
            raise SolarError(f"slice {s.start}:{s.end} is out of range for a model of {n} layers "
                             "(need 0 <= start < end <= n; end is exclusive)")
    first = configs[slices[0].model]
    for i, c in enumerate(configs):
        diff = [f.name for f in dataclasses.fields(ModelConfig)
                if f.name not in ("num_layers",) and getattr(c, f.name) != getattr(first, f.name)]
        if diff:
            raise SolarError(f"model {i} differs from model {slices[0].model} in {', '.join(diff)}; "
                             "slices must come from models of one architecture")
    return dataclasses.replace(first, num_layers=sum(s.end - s.start for s in slices))


def layer_sources(slices: Sequence[Slice]) -> list[tuple[int, int]]:
    """Output layer i -> (model index, source layer)."""
    return [(s.model, j) for s in slices for j in range(s.start, s.end)]


# ---- on param trees ------------------------------------------------------------------------

def passthrough_params(trees: Sequence[dict], configs: Sequence[ModelConfig],
                       slices: Sequence[Slice]) -> tuple[dict, ModelConfig]:
    """Concatenates layer slices on axis 0 of the stacked tree; returns (params, config)."""
    config = check_slices(slices, configs)
    flats = [model_lib.flat_params(t) for t in trees]
    bottom, top = flats[slices[0].model], flats[slices[-1].model]
    out = {}
    for path in hf.param_shapes(config):
        if path.startswith("layers/"):
            out[path] = jnp.concatenate([flats[s.model][path][s.start:s.end] for s in slices], axis=0)
        elif path == "embed/embedding":
            out[path] = bottom[path]
        else:  # final_norm, lm_head
            out[path] = top[path]
    return model_lib.unflatten_params(out), config


def depth_up_scale_params(params: dict, config: ModelConfig, m: int) -> tuple[dict, ModelConfig]:
    return passthrough_params([params], [config], solar_slices(config.num_layers, m))


def depth_up_scale(model: model_lib.Transformer, m: int | None = None,
                   slices: Sequence[Slice] | str | None = None) -> model_lib.Transformer:
    """A new model with 2(n - m) layers (or the given slices of `model`)."""
    if (m is None) == (slices is None):
        raise SolarError("give exactly one of m or slices")
    if isinstance(slices, str):
        slices = parse_slices(slices)
    slices = solar_slices(model.config.num_layers, m) if slices is None else slices
    params, config = passthrough_params([model_lib.param_dict(model)], [model.config], slices)
    deeper = model_lib.model_from_params(config, params, **model.options)
    deeper.source_dir = model.source_dir
    return deeper


# ---- streaming on HF directories -------------------------------------------------------------

def upscale_hf(model_dirs: Sequence[str], slices: Sequence[Slice], output_dir: str, *, dtype: str = "",
               max_shard_size: str = "5GB", overwrite: bool = False, progress: bool = True) -> Path:
    """Writes the up-scaled model tensor by tensor: each output tensor is read from its
    source file when its turn comes (bytes copied as they are unless `dtype` asks otherwise)."""
    check_output_dir(output_dir, overwrite)
    configs = [ModelConfig.from_hf_config(hf.read_hf_config(d)) for d in model_dirs]
    config = check_slices(slices, configs)
    sources = [hf.checked_checkpoint(d, c)[0] for d, c in zip(model_dirs, configs)]
    tables = [{(k.param, k.layer): k for k in hf.key_table(c)} for c in configs]
    layer_from = layer_sources(slices)
    first, last = slices[0].model, slices[-1].model
    origin = {}  # output HF name -> (model index, source HF name)
    for key in hf.key_table(config):
        if key.layer is not None:
            model_index, layer = layer_from[key.layer]
        else:
            model_index, layer = (first if key.param == "embed/embedding" else last), None
        origin[key.hf_name] = (model_index, tables[model_index][(key.param, layer)].hf_name)
    any_name = next(iter(origin.values()))[1]
    source_dtype = hf.dtype_name_of(sources[first][any_name].dtype(any_name))
    target = hf.export_dtype(dtype) if dtype else None
    specs = []
    for key in hf.key_table(config):
        model_index, name = origin[key.hf_name]
        reader = sources[model_index][name]
        specs.append((key.hf_name, target or reader.dtype(name), key.hf_shape))

    def produce(out_name):
        model_index, name = origin[out_name]
        array = sources[model_index][name].read(name)
        return array if target is None else array.astype(target)

    bar = tqdm(total=len(specs), desc="upscale", unit="tensor", disable=not progress)
    dtype_name = dtype or source_dtype
    with atomic_output_dir(output_dir, overwrite) as tmp:
        hf.write_config(tmp, config, dtype_name, model_dirs[first])
        hf.copy_side_files(model_dirs[first], tmp)
        hf.write_shards(tmp, specs, produce, hf.parse_size(max_shard_size), lambda _: bar.update())
    bar.close()
    return Path(output_dir)


def main(argv) -> None:
    from absl import flags

    c = flags.FLAGS.config
    models = [m for m in (c.models.split(",") if c.models else [c.model_dir]) if m]
    if not models:
        raise SolarError("model_dir is required (--config.model_dir=HF_DIR)")
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    if c.slices:
        slices = parse_slices(c.slices)
    else:
        from solar_jax.export import is_run_dir

        config_src = Path(models[0]) / "run.json" if is_run_dir(models[0]) else None
        if config_src:
            import json

            n = ModelConfig.from_hf_config(json.loads(config_src.read_text())["model_config"]).num_layers
        else:
            n = ModelConfig.from_hf_config(hf.read_hf_config(models[0])).num_layers
        slices = solar_slices(n, c.m)
    from solar_jax.export import is_run_dir

    if any(is_run_dir(m) for m in models):  # training runs: up-scale their checkpoints in memory
        from solar_jax.merge import load_params_any

        check_output_dir(c.output_dir, c.overwrite)
        loaded = [load_params_any(m) for m in models]
        params, config = passthrough_params([p for p, _, _ in loaded], [cfg for _, cfg, _ in loaded], slices)
        out = hf.save_hf_params(params, config, c.output_dir, dtype=c.dtype or "float32",
                                max_shard_size=c.max_shard_size, source_dir=loaded[slices[0].model][2],
                                overwrite=c.overwrite)
    else:
        out = upscale_hf(models, slices, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size,
                         overwrite=c.overwrite)
    layers = sum(s.end - s.start for s in slices)
    print(f"wrote {out}: {layers} layers from slices {', '.join(f'{s.start}:{s.end}@{s.model}' for s in slices)}")


if __name__ == "__main__":
    from solar_jax import cli

    cli.run(main, config_file="upscale.py")
