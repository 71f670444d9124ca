"""Model merging with mergekit's semantics: linear, SLERP, task arithmetic, TIES, DARE.

Every formula works on a stack of tensors with a leading layer axis L (one HF tensor per
layer), so the same code merges stacked param trees in memory and HF directories streamed
tensor by tensor (L = 1). Parameters (t, weight, density) resolve per HF tensor name and
per layer exactly as mergekit's `evaluate_setting`: a scalar, a list of anchors interpolated
over the layers (t_layer = i / (L - 1); embeddings use 0, final norm and lm_head use 1), or
a list of {filter, value} where the first filter contained in the tensor name wins.

Math is float32 like mergekit; SLERP's norms and dot products accumulate in float64.

    python -m solar_jax.merge --config=configs/merge.py --config.method=slerp \
        --config.models=A,B --config.t=0.5 --config.output_dir=OUT
    python -m solar_jax.merge --yaml=mergekit_style.yaml --output_dir=OUT
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from solar_jax import hf
from solar_jax import model as model_lib
from solar_jax.errors import SolarError
from solar_jax.model_config import ModelConfig
from solar_jax.outdir import atomic_output_dir, check_output_dir

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")
# mergekit's generalized task arithmetic family: (consensus, sparsification,
# default normalize, default rescale).
_TASK_ARITHMETIC = {
    "task_arithmetic": (None, None, False, False),
    "ties": ("sum", "magnitude", True, False),
    "dare_ties": ("sum", "random", False, True),
    "dare_linear": (None, "random", False, True),
}
DOT_THRESHOLD = 0.9995  # |cos| above this: the tensors are colinear, SLERP falls back to lerp
_EPS = 1e-8
_CHUNK = 1 << 22  # elements per float64 accumulation block (bounds the temporary memory)


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

    def __post_init__(self):
        if self.method not in METHODS:
            raise SolarError(f"unknown merge method {self.method!r}; supported: {', '.join(METHODS)}")
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
        if self.method in _TASK_ARITHMETIC and self.base is None:
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


def _layer_t(layer: int | None, num_layers: int, param: str) -> float:
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


# ---- the formulas, on [L, ...] float32 stacks -------------------------------------------------

def _bcast(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[L] -> [L, 1, ..., 1] float32 to broadcast against x [L, ...]."""
    return v.astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def dot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-layer dot products of [L, ...] arrays, accumulated in float64 block by block."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    out = np.zeros(a.shape[0], np.float64)
    for start in range(0, a2.shape[1], _CHUNK):
        sl = slice(start, start + _CHUNK)
        out += np.einsum("lp,lp->l", a2[:, sl].astype(np.float64), b2[:, sl].astype(np.float64))
    return out


def linear(xs: Sequence[np.ndarray], weights: Sequence[np.ndarray], normalize: bool = True) -> np.ndarray:
    """sum_i w_i x_i (/ sum_i w_i when normalize), per layer."""
    total = np.sum(weights, axis=0)
    if normalize and np.any(np.abs(total) < 1e-12):
        raise SolarError(f"linear merge weights sum to zero ({[float(w[0]) for w in weights]}); "
                         "cannot normalise")
    out = sum(x * _bcast(w, x) for x, w in zip(xs, weights))
    return out / _bcast(total, out) if normalize else out


def slerp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spherical interpolation per layer slice from a (t=0) to b (t=1), mergekit's formula:
    directions from the flattened tensors, lerp when |cos| > 0.9995."""
    na, nb = np.sqrt(dot64(a, a)), np.sqrt(dot64(b, b))
    # mergekit leaves a tensor unnormalised when its norm is <= eps.
    na, nb = np.where(na > _EPS, na, 1.0), np.where(nb > _EPS, nb, 1.0)
    dot = dot64(a, b) / (na * nb)
    colinear = np.abs(dot) > DOT_THRESHOLD
    theta0 = np.arccos(np.clip(dot, -1.0, 1.0))
    sin0 = np.where(colinear, 1.0, np.sin(theta0))
    s0 = np.where(colinear, 1.0 - t, np.sin(theta0 - theta0 * t) / sin0)
    s1 = np.where(colinear, t, np.sin(theta0 * t) / sin0)
    return _bcast(s0, a) * a + _bcast(s1, b) * b


def magnitude_mask(x: np.ndarray, density: float) -> np.ndarray:
    """Keeps the int(density * size) largest |x| of one tensor (TIES trim)."""
    if density >= 1:
        return np.ones(x.shape, bool)
    k = int(density * x.size)
    if k <= 0:
        raise SolarError(f"density {density} keeps no element of a tensor of {x.size}")
    flat = np.abs(x).reshape(-1)
    keep = np.zeros(x.size, bool)
    keep[np.argpartition(flat, x.size - k)[x.size - k:]] = True
    return keep.reshape(x.shape)


def _tensor_rng(seed: int, model: int, tensor_name: str) -> np.random.Generator:
    # One stream per (seed, model, tensor): the same masks in memory and when streaming.
    return np.random.default_rng([seed, model, zlib.crc32(tensor_name.encode())])


def task_arithmetic(base: np.ndarray, xs: Sequence[np.ndarray], weights: Sequence[np.ndarray],
                    densities: Sequence[np.ndarray], *, consensus: str | None, sparsify: str | None,
                    normalize: bool, rescale: bool, tensor_names: Sequence[str], models: Sequence[int],
                    seed: int = 0) -> np.ndarray:
    """mergekit's generalized task arithmetic (task_arithmetic, ties, dare_ties, dare_linear).

    deltas d_i = x_i - base; sparsified per layer slice (magnitude top-k or Bernoulli keep,
    DARE rescales kept values by 1/density); weighted by w_i; with sign consensus only the
    deltas agreeing with sign(sum_i w_i d_i) count, and normalisation divides by the sum of
    the weights that count. Result: base + mixed delta.
    """
    deltas = []
    for x, density, model in zip(xs, densities, models):
        d = x - base
        if sparsify is not None:
            for layer in range(d.shape[0]):
                rho = float(density[layer])
                if rho >= 1:
                    continue
                if sparsify == "magnitude":
                    d[layer] *= magnitude_mask(d[layer], rho)
                else:
                    keep = _tensor_rng(seed, model, tensor_names[layer]).random(d[layer].shape) < rho
                    d[layer] *= keep
                    if rescale:
                        d[layer] /= np.float32(rho)
        deltas.append(d)
    weighted = np.stack([d * _bcast(w, d) for d, w in zip(deltas, weights)])  # [K, L, ...]
    w = np.stack([_bcast(w, base) for w in weights])  # [K, L, 1, ...]
    if consensus == "sum":
        majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0).astype(np.float32)
        mask = np.sign(weighted) == majority
        mixed = (weighted * mask).sum(axis=0)
        divisor = (w * mask).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(axis=0)
        divisor = np.broadcast_to(w.sum(axis=0), mixed.shape).copy()
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return base + mixed


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
    consensus, sparsify, normalize, rescale = _TASK_ARITHMETIC[spec.method]
    others = [i for i in range(n) if i != spec.base]
    weights = [resolve(spec, "weight", i, tensor_names, ts, required=True) for i in others]
    densities = [resolve(spec, "density", i, tensor_names, ts, default=1.0) for i in others]  # checked by validate_spec
    return task_arithmetic(
        stacks[spec.base], [stacks[i] for i in others], weights, densities, consensus=consensus,
        sparsify=sparsify, normalize=_global_flag(spec, "normalize", normalize),
        rescale=_global_flag(spec, "rescale", rescale), tensor_names=tensor_names, models=others,
        seed=spec.seed)


def validate_spec(spec: MergeSpec, config: ModelConfig) -> None:
    """Resolves every parameter for every tensor (cheap): bad settings fail before any work."""
    others = [i for i in range(spec.num_models) if i != spec.base]
    for names, ts in _path_names(config).values():
        if spec.method == "linear":
            weights = [resolve(spec, "weight", i, names, ts, default=1.0) for i in range(spec.num_models)]
            if _global_flag(spec, "normalize", True) and np.any(np.abs(np.sum(weights, axis=0)) < 1e-12):
                raise SolarError(f"linear merge weights sum to zero for {names[0]}; cannot normalise")
        elif spec.method == "slerp":
            resolve(spec, "t", None, names, ts, required=True)
        else:
            for i in others:
                resolve(spec, "weight", i, names, ts, required=True)
                d = resolve(spec, "density", i, names, ts, default=1.0)
                if np.any((d <= 0) | (d > 1)):
                    raise SolarError(f"density must be in (0, 1], got {float(d.min())} for {names[0]}")


# ---- on param trees ----------------------------------------------------------------------------

def _check_same_configs(configs: Sequence[ModelConfig], names: Sequence[str]) -> None:
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


def _path_names(config: ModelConfig) -> dict[str, tuple[list[str], list[float]]]:
    """param path -> (HF tensor name per layer, t per layer)."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    for key in hf.key_table(config):
        names, ts = out.setdefault(key.param, ([], []))
        names.append(key.hf_name)
        ts.append(_layer_t(key.layer, config.num_layers, key.param))
    return out


def merge_params(trees: Sequence[dict], configs: Sequence[ModelConfig], spec: MergeSpec) -> dict:
    """Merges param trees (float32 on host), one param path at a time; returns jax arrays."""
    import jax

    _check_same_configs(configs, [f"model {i}" for i in range(len(configs))])
    validate_spec(spec, configs[0])
    flats = [model_lib.flat_params(t) for t in trees]
    out = {}
    for path, (names, ts) in _path_names(configs[0]).items():
        stacks = [np.asarray(jax.device_get(f[path]), np.float32) for f in flats]
        if path.startswith("layers/"):
            merged = merge_stacks(spec, stacks, names, ts)
        else:
            merged = merge_stacks(spec, [s[None] for s in stacks], names, ts)[0]
        out[path] = jax.device_put(merged.astype(np.float32))
    return model_lib.unflatten_params(out)


def merge(models: Sequence[model_lib.Transformer], method: str = "linear", *, weights=None, t=None,
          base: model_lib.Transformer | None = None, density=None, normalize: bool | None = None,
          rescale: bool | None = None, seed: int = 0) -> model_lib.Transformer:
    """Merges models in memory; returns a new Transformer.

    linear: weights (default equal, normalised). slerp: t (scalar, anchors, or mergekit
    filter list) from models[0] to models[1]. task_arithmetic / ties / dare_ties /
    dare_linear: base=..., weights (default 1 each), density (ties/dare).
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
            elif method in _TASK_ARITHMETIC:
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


# ---- streaming on HF directories ------------------------------------------------------------

def merge_hf(model_dirs: Sequence[str], spec: MergeSpec, output_dir: str, *, dtype: str = "",
             max_shard_size: str = "5GB", overwrite: bool = False, progress: bool = True) -> Path:
    """Merges HF dirs tensor by tensor: reads one tensor of each model, writes the result."""
    check_output_dir(output_dir, overwrite)
    if len(model_dirs) != spec.num_models:
        raise SolarError(f"{len(model_dirs)} model dirs for a spec of {spec.num_models}")
    configs = [ModelConfig.from_hf_config(hf.read_hf_config(d)) for d in model_dirs]
    _check_same_configs(configs, list(model_dirs))
    sources = [hf.checked_checkpoint(d, c)[0] for d, c in zip(model_dirs, configs)]
    config = configs[0]
    table = hf.key_table(config)
    ref = spec.base if spec.base is not None else 0
    first_name = table[0].hf_name
    in_dtype = np.dtype(sources[ref][first_name].dtype(first_name))
    dtype_name = dtype or hf.dtype_name_of(in_dtype)
    target = hf.export_dtype(dtype_name)
    by_name = {k.hf_name: k for k in table}

    def produce(name: str) -> np.ndarray:
        key = by_name[name]
        stacks = [src[name].read(name).astype(np.float32, copy=False).reshape((1,) + key.hf_shape)
                  for src in sources]
        t = _layer_t(key.layer, config.num_layers, key.param)
        return merge_stacks(spec, stacks, [name], [t])[0].astype(target, copy=False)

    validate_spec(spec, config)
    bar = tqdm(total=len(table), desc=f"merge ({spec.method})", unit="tensor", disable=not progress)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        hf.write_config(tmp, config, dtype_name, model_dirs[ref])
        hf.copy_side_files(model_dirs[ref], tmp)
        hf.write_shards(tmp, [(k.hf_name, target, k.hf_shape) for k in table], produce,
                        hf.parse_size(max_shard_size), lambda _: bar.update())
    bar.close()
    return Path(output_dir)


class _CallableModule(type(dataclasses)):
    """`sj.merge(...)` must work even after `import solar_jax.merge` binds this module as the
    package attribute `merge` (the command needs the module name): calling the module calls
    `merge`."""

    def __call__(self, *args, **kwargs):
        return merge(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule


def load_params_any(path: str) -> tuple[dict, ModelConfig, str | None]:
    """An HF dir or a solar_jax run dir (its latest checkpoint) -> (params, config, tokenizer source)."""
    from solar_jax.export import is_run_dir, load_run_params

    if is_run_dir(path):
        params, config, record, _ = load_run_params(path)
        return params, config, record.get("model_dir")
    config = ModelConfig.from_hf_config(hf.read_hf_config(path))
    return hf.load_hf_params(path, config), config, path


def merge_any(model_dirs: Sequence[str], spec: MergeSpec, output_dir: str, *, dtype: str = "",
              max_shard_size: str = "5GB", overwrite: bool = False) -> Path:
    """Streams when every input is an HF dir; with a training run dir among them, merges the
    runs' checkpoints in memory (no round trip through HF) and writes an HF dir."""
    from solar_jax.export import is_run_dir

    if not any(is_run_dir(d) for d in model_dirs):
        return merge_hf(model_dirs, spec, output_dir, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite)
    check_output_dir(output_dir, overwrite)
    loaded = [load_params_any(d) for d in model_dirs]
    params = merge_params([p for p, _, _ in loaded], [c for _, c, _ in loaded], spec)
    ref = spec.base if spec.base is not None else 0
    return hf.save_hf_params(params, loaded[ref][1], output_dir, dtype=dtype or "float32",
                             max_shard_size=max_shard_size, source_dir=loaded[ref][2], overwrite=overwrite)


# ---- command line ----------------------------------------------------------------------------

def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SolarError(f"cannot read {what} {text!r}; expected comma-separated numbers") from None


def _setting(text: str, what: str):
    values = _floats(text, what)
    return values[0] if len(values) == 1 else values


def spec_from_config(c) -> tuple[list[str], MergeSpec]:
    """configs/merge.py fields -> (model dirs, MergeSpec)."""
    dirs = [d for d in str(c.models).split(",") if d]
    if c.base and c.base not in dirs:
        dirs = [c.base] + dirs
    base = dirs.index(c.base) if c.base else None
    others = [i for i in range(len(dirs)) if i != base]
    weights = _floats(c.weights, "weights") if c.weights else None
    if weights is not None and len(weights) != len(others):
        raise SolarError(f"{len(weights)} weights for {len(others)} models (the base takes none)")
    model_params = [{} for _ in dirs]
    for k, i in enumerate(others):
        if weights is not None:
            model_params[i]["weight"] = weights[k]
        elif c.method in _TASK_ARITHMETIC:
            model_params[i]["weight"] = 1.0
        if c.density:
            model_params[i]["density"] = _setting(c.density, "density")
    params: dict[str, Any] = {}
    if c.method == "slerp":
        filters = [{"filter": f, "value": _setting(v, f"t_{f}")}
                   for f, v in (("self_attn", c.t_self_attn), ("mlp", c.t_mlp)) if v]
        t = _setting(c.t, "t")
        params["t"] = filters + [{"value": t}] if filters else t
    if c.normalize in ("true", "false"):
        params["normalize"] = c.normalize == "true"
    elif c.normalize:
        raise SolarError(f"normalize must be true, false or empty, got {c.normalize!r}")
    return dirs, MergeSpec(c.method, len(dirs), base=base, params=params, model_params=model_params, seed=c.seed)


def main(argv) -> None:
    from absl import flags

    from solar_jax import mergekit_yaml, upscale

    FLAGS = flags.FLAGS
    if FLAGS.yaml:
        output_dir = FLAGS.output_dir or FLAGS.config.output_dir
        overwrite = FLAGS.overwrite or FLAGS.config.overwrite
        if not output_dir:
            raise SolarError("output_dir is required (--output_dir=OUT)")
        check_output_dir(output_dir, overwrite)
        plan = mergekit_yaml.read_yaml(FLAGS.yaml)
        if plan.method == "passthrough":
            out = upscale.upscale_hf(plan.model_dirs, plan.slices, output_dir, dtype=plan.dtype, overwrite=overwrite)
        else:
            out = merge_any(plan.model_dirs, plan.spec, output_dir, dtype=plan.dtype, overwrite=overwrite)
        print(f"wrote {out} ({plan.method} of {len(plan.model_dirs)} models)")
        return
    c = FLAGS.config
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    check_output_dir(c.output_dir, c.overwrite)
    dirs, spec = spec_from_config(c)
    out = merge_any(dirs, spec, c.output_dir, dtype=c.dtype, max_shard_size=c.max_shard_size, overwrite=c.overwrite)
    print(f"wrote {out} ({spec.method} of {len(dirs)} models)")


if __name__ == "__main__":
    from absl import flags

    from solar_jax import cli

    def define():
        flags.DEFINE_string("yaml", None, "a mergekit-style YAML file (instead of --config)")
        flags.DEFINE_string("output_dir", None, "output dir for --yaml")
        flags.DEFINE_bool("overwrite", False, "replace a non-empty output dir (--yaml)")

    cli.run(main, config_file="merge.py", define=define)
