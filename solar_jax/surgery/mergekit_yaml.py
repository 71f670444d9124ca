"""mergekit-style YAML -> a merge (MergeSpec over model dirs) or an up-scale (slices).

Supported: merge_method linear, slerp, task_arithmetic, ties, dare_ties, dare_linear with
`models:` (or one `slices:` entry whose sources all span every layer), and passthrough with
`slices:` of one source each (depth up-scaling). Models are local directories (no hub).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.surgery.merge import METHODS, MergeSpec
from solar_jax.surgery.upscale import Slice
from solar_jax.weights import hf

SUPPORTED = METHODS + ("passthrough",)
_KNOWN_KEYS = {"merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype",
               "tokenizer_source", "seed"}


@dataclasses.dataclass
class YamlPlan:
    method: str
    model_dirs: list[str]
    dtype: str
    spec: MergeSpec | None = None  # merges
    slices: list[Slice] | None = None  # passthrough


def _model_dir(ref: Any, where: str) -> str:
    if not isinstance(ref, str) or not ref:
        raise SolarError(f"{where}: model must be a path, got {ref!r}")
    if "+" in ref:
        raise SolarError(f"{where}: model {ref!r}: LoRA references (model+lora) are not supported")
    if not Path(ref).expanduser().is_dir():
        raise SolarError(f"{where}: model {ref!r} is not a local directory (no model hub is used)")
    return str(Path(ref).expanduser())


def read_yaml(path: str) -> YamlPlan:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SolarError(f"yaml file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise SolarError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict):
        raise SolarError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(doc) - _KNOWN_KEYS)
    if unknown:
        raise SolarError(f"{path}: unsupported key {unknown[0]!r} (supported: {', '.join(sorted(_KNOWN_KEYS))})")
    method = doc.get("merge_method")
    if method not in SUPPORTED:
        raise SolarError(f"{path}: unsupported merge_method {method!r}; supported: {', '.join(SUPPORTED)}")
    tok = doc.get("tokenizer_source")
    if tok not in (None, "base"):
        raise SolarError(f"{path}: tokenizer_source {tok!r} is not supported (tokenizer files come from the base model)")
    dtype = doc.get("out_dtype") or doc.get("dtype") or ""
    if dtype == "float16" or dtype == "bfloat16" or dtype == "float32" or dtype == "":
        pass
    else:
        raise SolarError(f"{path}: unknown dtype {dtype!r}; known: float32, bfloat16, float16")
    if bool(doc.get("models")) == bool(doc.get("slices")):
        raise SolarError(f"{path}: give exactly one of models: or slices:")

    dirs: list[str] = []

    def index_of(ref: Any, where: str) -> int:
        d = _model_dir(ref, where)
        if d not in dirs:
            dirs.append(d)
        return dirs.index(d)

    if method == "passthrough":
        if not doc.get("slices"):
            raise SolarError(f"{path}: passthrough needs slices:")
        slices = []
        for i, s in enumerate(doc["slices"]):
            sources = (s or {}).get("sources") or []
            if len(sources) != 1:
                raise SolarError(f"{path}: passthrough slice {i} must have exactly one source, has {len(sources)}")
            src = sources[0]
            rng = src.get("layer_range")
            if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, int) for v in rng)):
                raise SolarError(f"{path}: slice {i}: layer_range must be [start, end], got {rng!r}")
            slices.append(Slice(rng[0], rng[1], index_of(src.get("model"), f"slice {i}")))
        return YamlPlan(method, dirs, dtype, slices=slices)

    entries: list[tuple[Any, dict]] = []
    if doc.get("models"):
        for i, m in enumerate(doc["models"]):
            if not isinstance(m, dict) or "model" not in m:
                raise SolarError(f"{path}: models[{i}] needs a model: entry")
            entries.append((m["model"], m.get("parameters") or {}))
    else:
        if len(doc["slices"]) != 1:
            raise SolarError(f"{path}: {method} over several slices is not supported; "
                             "use models: or one slice spanning all layers")
        sources = doc["slices"][0].get("sources") or []
        ranges = {tuple(s.get("layer_range") or ()) for s in sources}
        if len(ranges) != 1:
            raise SolarError(f"{path}: all sources of the slice must share one layer_range, got {sorted(ranges)}")
        entries = [(s.get("model"), s.get("parameters") or {}) for s in sources]
        layer_range = next(iter(ranges))
    model_params: list[dict] = []
    for i, (ref, params) in enumerate(entries):
        k = index_of(ref, f"models[{i}]")
        if k < len(model_params):
            raise SolarError(f"{path}: model {ref} is listed twice")
        model_params.append(dict(params))
    base = None
    if doc.get("base_model") is not None:
        base = index_of(doc["base_model"], "base_model")
        if base == len(model_params):  # a base not among the models: mergekit adds it
            model_params.append({})
    if doc.get("slices"):
        n = ModelConfig.from_hf_config(hf.read_hf_config(dirs[0])).num_layers
        if list(layer_range) != [0, n]:
            raise SolarError(f"{path}: layer_range {list(layer_range)} must span all {n} layers for {method}")
    spec = MergeSpec(method, len(dirs), base=base, params=dict(doc.get("parameters") or {}),
                     model_params=model_params, seed=int(doc.get("seed", 0)))
    return YamlPlan(method, dirs, dtype, spec=spec)
