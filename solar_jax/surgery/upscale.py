"""Depth up-scaling: layer slices of one or more models, concatenated on the layer axis.

SOLAR: from an n-layer base drop the last m layers of one copy and the first m of the other,
s = 2(n - m) layers: slices [0, n-m) and [m, n). Embeddings come from the first slice's
model (the bottom copy), final norm and lm_head from the last slice's (the top copy), as in
mergekit's passthrough.

HF directories are up-scaled tensor by tensor in surgery/streaming.py; the command is
`python -m solar_jax.upscale`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax.numpy as jnp

from solar_jax.weights import hf
from solar_jax.models import transformer as model_lib
from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig


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
