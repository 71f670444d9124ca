"""Depth up-scaling: layer slices of one or more models, concatenated on the layer axis.

SOLAR: from an n-layer base drop the last m layers of one copy and the first m of the other,
s = 2(n - m) layers: slices [0, n-m) and [m, n). Embeddings come from the first slice's
model (the bottom copy), final norm and lm_head from the last slice's (the top copy), as in
mergekit's passthrough.

Initialisations of the layers that appear more than once (`init`; SOLAR's m = 8 of n = 32
duplicates layers 8..23), applied to their output projections (attention o and MLP down,
the only weights that write into the residual stream):
  copy      SOLAR's duplicate: every copy as it is.
  identity  every occurrence after the first gets o = down = 0, so it adds nothing to the
            residual stream: with SOLAR's slices the up-scaled model computes exactly the
            base model's function at step 0, and training can grow those layers (LLaMA Pro's
            block expansion zeroes its new blocks the same way).
  scaled    every occurrence of a layer that appears k times gets o and down times 1/k
            (1/2 for SOLAR's slices), in all its copies.

LLaMA Pro's block expansion is the slices `expand:P` (llama_pro_slices) with init=identity.

HF directories are up-scaled tensor by tensor in surgery/streaming.py; the command is
`python -m solar_jax.upscale`.
"""

from __future__ import annotations

import collections
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


def llama_pro_slices(n: int, blocks: int) -> list[Slice]:
    """LLaMA Pro's block expansion as slices: the n layers in `blocks` groups of near-equal
    size (group g ends at layer (g + 1) n // blocks), each followed by a second occurrence
    of its last layer; n + blocks layers. With init=identity those copies start as
    identities, which is LLaMA Pro's zero-initialised new block."""
    if not 1 <= blocks <= n:
        raise SolarError(f"expand:{blocks} needs 1 <= blocks <= n (n = {n} layers)")
    slices, start = [], 0
    for g in range(blocks):
        end = (g + 1) * n // blocks
        slices += [Slice(start, end), Slice(end - 1, end)]
        start = end
    return slices


def resolve_slices(text: str, n: int) -> list[Slice]:
    """'0:24,8:32' (parse_slices) or 'expand:P' (LLaMA Pro: P blocks interleaved into n layers)."""
    match = re.fullmatch(r"\s*expand:(\d+)\s*", text)
    if match:
        return llama_pro_slices(n, int(match.group(1)))
    if text.strip().startswith("expand"):
        raise SolarError(f"cannot read {text!r}; expected expand:P (P new blocks, LLaMA Pro)")
    return parse_slices(text)


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


def repeated_layers(slices: Sequence[Slice]) -> list[bool]:
    """Output layer i -> whether its source layer appeared before it (the new layers: what
    `identity` zeroes and training's upscale_train=new trains)."""
    seen: set[tuple[int, int]] = set()
    out = []
    for source in layer_sources(slices):
        out.append(source in seen)
        seen.add(source)
    return out


INITS = ("copy", "identity", "scaled")
# What writes into the residual stream (o's bias too, where a model has one).
OUTPUT_PROJECTIONS = ("layers/attn/o", "layers/attn/o_bias", "layers/mlp/down")


def check_init(init: str) -> None:
    if init not in INITS:
        raise SolarError(f"unknown init {init!r}; known: {', '.join(INITS)}")


def output_scales(slices: Sequence[Slice], init: str) -> list[float]:
    """Output layer i -> the factor on its output projections under `init` (see the module
    docstring); 1.0 for a layer that appears once."""
    check_init(init)
    sources = layer_sources(slices)
    count, seen, scales = collections.Counter(sources), collections.Counter(), []
    for source in sources:
        seen[source] += 1
        if init == "copy" or count[source] == 1:
            scales.append(1.0)
        elif init == "identity":
            scales.append(1.0 if seen[source] == 1 else 0.0)
        else:
            scales.append(1.0 / count[source])
    return scales


# ---- on param trees ------------------------------------------------------------------------

def passthrough_params(trees: Sequence[dict], configs: Sequence[ModelConfig],
                       slices: Sequence[Slice], init: str = "copy") -> tuple[dict, ModelConfig]:
    """Concatenates layer slices on axis 0 of the stacked tree; returns (params, config).
    init: how repeated layers start (INITS)."""
    config = check_slices(slices, configs)
    scales = output_scales(slices, init)
    flats = [model_lib.flat_params(t) for t in trees]
    bottom, top = flats[slices[0].model], flats[slices[-1].model]
    out = {}
    for path in hf.param_shapes(config):
        if path.startswith("layers/"):
            out[path] = jnp.concatenate([flats[s.model][path][s.start:s.end] for s in slices], axis=0)
            if path in OUTPUT_PROJECTIONS and any(x != 1.0 for x in scales):
                factor = jnp.asarray(scales, out[path].dtype).reshape((-1,) + (1,) * (out[path].ndim - 1))
                out[path] = out[path] * factor
        elif path == "embed/embedding":
            out[path] = bottom[path]
        else:  # final_norm, lm_head
            out[path] = top[path]
    return model_lib.unflatten_params(out), config


def depth_up_scale(model: model_lib.Transformer, m: int | None = None,
                   slices: Sequence[Slice] | str | None = None, init: str = "copy") -> model_lib.Transformer:
    """A new model with 2(n - m) layers (or the given slices of `model`); init: how the
    repeated layers start (copy, identity, scaled: see the module docstring)."""
    if (m is None) == (slices is None):
        raise SolarError("give exactly one of m or slices")
    if isinstance(slices, str):
        slices = resolve_slices(slices, model.config.num_layers)
    slices = solar_slices(model.config.num_layers, m) if slices is None else slices
    params, config = passthrough_params([model_lib.param_dict(model)], [model.config], slices, init)
    deeper = model_lib.model_from_params(config, params, **model.options)
    deeper.source_dir = model.source_dir
    return deeper
