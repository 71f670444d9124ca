"""Model merging with mergekit's semantics: linear, SLERP, task arithmetic, TIES, DARE.

What to merge (MergeSpec), how each parameter resolves, and merging in memory (`merge`,
the public API, and `merge_params` on param trees). The formulas are in merge_math.py;
HF directories are merged tensor by tensor in streaming.py. Parameters (t, weight, density) resolve per HF tensor name and
per layer exactly as mergekit's `evaluate_setting`: a scalar, a list of anchors interpolated
over the layers (t_layer = i / (L - 1); embeddings use 0, final norm and lm_head use 1), or
a list of {filter, value} where the first filter contained in the tensor name wins.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.weights import hf
from solar_jax.surgery.merge_math import linear, slerp, task_arithmetic

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")
# mergekit's generalized task arithmetic family: (consensus, sparsification,
# default normalize, default rescale).
NUMERICS = ("exact", "mergekit")
TASK_ARITHMETIC = {
    "task_arithmetic": (None, None, False, False),
    "ties": ("sum", "magnitude", True, False),
    "dare_ties": ("sum", "random", False, True),
    "dare_linear": (None, "random", False, True),
}


@dataclasses.dataclass
class MergeSpec:
    """What to merge. model_params[i] are model i's settings (weight, density); params are
    the global ones (t, normalize, rescale, and defaults for weight/density)."""

    method: str
    num_models: int
    base: int | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_params: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seed: int = 0
    # "exact": float32 math, only the output rounded; "mergekit": the task-arithmetic family
    # computed in math_dtype as mergekit does (merge_math's docstring), for outputs equal to
    # its own; math_dtype "" takes the output's dtype
    numerics: str = "exact"
    math_dtype: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise SolarError(f"unknown merge method {self.method!r}; supported: {', '.join(METHODS)}")
        if self.numerics not in NUMERICS:
            raise SolarError(f"unknown numerics {self.numerics!r}; known: {', '.join(NUMERICS)}")
        if not self.model_params:
            self.model_params = [{} for _ in range(self.num_models)]
        if self.num_models < 2:
            raise SolarError(f"{self.method} needs at least two models, got {self.num_models}")
        if self.method == "slerp":
            if self.num_models != 2:
                raise SolarError(f"slerp merges exactly two models, got {self.num_models}")
            self.base = 0 if self.base is None else self.base
            if "t" not in self.params:
                raise SolarError("slerp needs t (0 gives the base model, 1 the other)")
        if self.method in TASK_ARITHMETIC and self.base is None:
            raise SolarError(f"{self.method} needs a base model")
        if self.base is not None and not 0 <= self.base < self.num_models:
            raise SolarError(f"base model index {self.base} out of range for {self.num_models} models")


# ---- parameters per tensor and layer, as mergekit resolves them ------------------------------

def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's evaluate_setting: scalar, gradient of anchors, or [{filter, value}, ...]."""
    if setting is None or isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, (list, tuple)):
        if setting and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond:
                raise SolarError(f"cannot read parameter setting {setting!r}")
            flt = cond.get("filter")
            if flt is None or flt == "*" or flt in tensor_name:
                return evaluate_setting(cond["value"], tensor_name, t)
        return None
    raise SolarError(f"cannot read parameter setting {setting!r}")


def layer_t(layer: int | None, num_layers: int, param: str) -> float:
    if layer is None:  # mergekit: pre-layer weights at t = 0, post-layer weights at t = 1
        return 0.0 if param == "embed/embedding" else 1.0
    return layer / (num_layers - 1) if num_layers > 1 else 1.0


def resolve(spec: MergeSpec, name: str, model: int | None, tensor_names: Sequence[str],
            ts: Sequence[float], default: Any = None, required: bool = False) -> np.ndarray | None:
    """One value per layer [L] (float64) of parameter `name` for `model` (None: global)."""
    values = []
    for tensor_name, t in zip(tensor_names, ts):
        value = None
        if model is not None:
            value = evaluate_setting(spec.model_params[model].get(name), tensor_name, t)
        if value is None:
            value = evaluate_setting(spec.params.get(name), tensor_name, t)
        if value is None:
            value = default
        if value is None:
            if required:
                who = f" for model {model}" if model is not None else ""
                raise SolarError(f"missing parameter {name}{who} ({spec.method}, tensor {tensor_name})")
            return None
        values.append(float(value))
    return np.asarray(values, np.float64)


def _global_flag(spec: MergeSpec, name: str, default: bool) -> bool:
    value = spec.params.get(name, default)
    if not isinstance(value, bool):
        raise SolarError(f"parameter {name} must be true or false, got {value!r}")
    return value


def merge_stacks(spec: MergeSpec, stacks: Sequence[np.ndarray], tensor_names: Sequence[str],
                 ts: Sequence[float]) -> np.ndarray:
    """Merges one param path (or one HF tensor): stacks[i] is model i's float32 [L, ...]."""
    n = spec.num_models
    if spec.method == "linear":
        weights = [resolve(spec, "weight", i, tensor_names, ts, default=1.0) for i in range(n)]
        return linear(stacks, weights, _global_flag(spec, "normalize", True))
    if spec.method == "slerp":
        t = resolve(spec, "t", None, tensor_names, ts, required=True)
        other = 1 - spec.base
        return slerp(t, stacks[spec.base], stacks[other])
    consensus, sparsify, normalize, rescale = TASK_ARITHMETIC[spec.method]
    others = [i for i in range(n) if i != spec.base]
    weights = [resolve(spec, "weight", i, tensor_names, ts, required=True) for i in others]
    densities = [resolve(spec, "density", i, tensor_names, ts, default=1.0) for i in others]  # checked by validate_spec
    return task_arithmetic(
        stacks[spec.base], [stacks[i] for i in others], weights, densities, consensus=consensus,
        sparsify=sparsify, normalize=_global_flag(spec, "normalize", normalize),
        rescale=_global_flag(spec, "rescale", rescale), tensor_names=tensor_names, models=others,
        seed=spec.seed, mergekit_dtype=(spec.math_dtype or "float32") if spec.numerics == "mergekit" else None)


def validate_spec(spec: MergeSpec, config: ModelConfig) -> None:
    """Resolves every parameter for every tensor (cheap): bad settings fail before any work."""
    others = [i for i in range(spec.num_models) if i != spec.base]
    for names, ts in path_names(config).values():
        if spec.method == "linear":
            weights = [resolve(spec, "weight", i, names, ts, default=1.0) for i in range(spec.num_models)]
            if _global_flag(spec, "normalize", True) and np.any(np.abs(np.sum(weights, axis=0)) < 1e-12):
                raise SolarError(f"linear merge weights sum to zero for {names[0]}; cannot normalise")
        elif spec.method == "slerp":
            t = resolve(spec, "t", None, names, ts, required=True)
            if np.any((t < 0) | (t > 1)):  # past the ends slerp extrapolates beyond both models
                bad = float(t[(t < 0) | (t > 1)][0])
                raise SolarError(f"slerp t must be in [0, 1] (0: the base model, 1: the other), got {bad:g} "
                                 f"for {names[0]}")
        else:
            for i in others:
                resolve(spec, "weight", i, names, ts, required=True)
                d = resolve(spec, "density", i, names, ts, default=1.0)
                if np.any((d <= 0) | (d > 1)):
                    raise SolarError(f"density must be in (0, 1], got {float(d.min())} for {names[0]}")


# ---- on param trees ----------------------------------------------------------------------------

def check_same_configs(configs: Sequence[ModelConfig], names: Sequence[str]) -> None:
    tables = [{k.hf_name: k.hf_shape for k in hf.key_table(c)} for c in configs]
    for i in range(1, len(configs)):
        for name, shape in tables[0].items():
            if name not in tables[i]:
                raise SolarError(f"tensor {name} of {names[0]} is missing from {names[i]} "
                                 f"({configs[0].num_layers} vs {configs[i].num_layers} layers)")
            if tables[i][name] != shape:
                raise SolarError(f"tensor {name} has shape {shape} in {names[0]} but {tables[i][name]} in {names[i]}")
        extra = sorted(set(tables[i]) - set(tables[0]))
        if extra:
            raise SolarError(f"tensor {extra[0]} of {names[i]} has no counterpart in {names[0]}")
        if configs[i] != configs[0]:
            diff = [f.name for f in dataclasses.fields(ModelConfig) if getattr(configs[i], f.name) != getattr(configs[0], f.name)]
            raise SolarError(f"{names[i]} differs from {names[0]} in {', '.join(diff)}")


def path_names(config: ModelConfig) -> dict[str, tuple[list[str], list[float]]]:
    """param path -> (HF tensor name per layer, t per layer)."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    for key in hf.key_table(config):
        names, ts = out.setdefault(key.param, ([], []))
        names.append(key.hf_name)
        ts.append(layer_t(key.layer, config.num_layers, key.param))
    return out


def merge_params(trees: Sequence[dict], configs: Sequence[ModelConfig], spec: MergeSpec) -> dict:
    """Merges param trees (float32 on host), one param path at a time; returns jax arrays."""
    check_same_configs(configs, [f"model {i}" for i in range(len(configs))])
    validate_spec(spec, configs[0])
    flats = [model_lib.flat_params(t) for t in trees]
    out = {}
    for path, (names, ts) in path_names(configs[0]).items():
        stacks = [np.asarray(jax.device_get(f[path]), np.float32) for f in flats]
        if path.startswith("layers/"):
            merged = merge_stacks(spec, stacks, names, ts)
        else:
            merged = merge_stacks(spec, [s[None] for s in stacks], names, ts)[0]
        out[path] = jax.device_put(merged.astype(np.float32))
    return model_lib.unflatten_params(out)


def merge_models(models: Sequence[model_lib.Transformer], method: str = "linear", *, weights=None, t=None,
          base: model_lib.Transformer | None = None, density=None, normalize: bool | None = None,
          rescale: bool | None = None, seed: int = 0) -> model_lib.Transformer:
    """Merges models in memory; returns a new Transformer.

    linear: weights (default equal, normalised; negative ones allowed). slerp: t in [0, 1]
    (scalar, anchors, or mergekit filter list) from models[0] to models[1].
    task_arithmetic / ties / dare_ties / dare_linear: base=..., weights (default 1 each; a
    negative one subtracts that task vector), density in (0, 1] (ties/dare).
    """
    models = list(models)
    base_index = None
    if base is not None:
        if any(m is base for m in models):
            base_index = next(i for i, m in enumerate(models) if m is base)
        else:
            models = [base] + models
            base_index = 0
    per_model = []
    others = [i for i in range(len(models)) if i != base_index]
    ws = list(weights) if weights is not None else None
    if ws is not None and len(ws) != len(others) and method != "linear":
        raise SolarError(f"{len(ws)} weights for {len(others)} models")
    for i in range(len(models)):
        params: dict[str, Any] = {}
        if i in others or method == "linear":
            k = others.index(i) if method != "linear" else i
            if ws is not None:
                if k >= len(ws):
                    raise SolarError(f"{len(ws)} weights for {len(models)} models")
                params["weight"] = ws[k]
            elif method in TASK_ARITHMETIC:
                params["weight"] = 1.0
            if density is not None and i != base_index:
                params["density"] = density
        per_model.append(params)
    glob: dict[str, Any] = {}
    if t is not None:
        glob["t"] = t
    if normalize is not None:
        glob["normalize"] = normalize
    if rescale is not None:
        glob["rescale"] = rescale
    spec = MergeSpec(method, len(models), base=base_index, params=glob, model_params=per_model, seed=seed)
    params = merge_params([model_lib.param_dict(m) for m in models], [m.config for m in models], spec)
    merged = model_lib.model_from_params(models[0].config, params, **models[0].options)
    merged.source_dir = models[spec.base or 0].source_dir
    return merged
