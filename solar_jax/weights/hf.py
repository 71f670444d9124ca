"""Hugging Face directories <-> solar_jax param trees, through one key table.

`key_table(config)` lists every HF tensor with its place in the stacked param tree (path
and layer index) and both shapes. Import walks it one direction, export the other; any
missing, unexpected or duplicated tensor, or a wrong shape, is an error naming the key.
HF Llama/Mistral/Qwen q/k weights are already in rotate-half layout: no permutation.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import ml_dtypes
import numpy as np

from solar_jax.models import transformer as model_lib
from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.weights.outdir import atomic_output_dir, output_path
from solar_jax.weights.safetensors_io import SafetensorsReader, SafetensorsWriter

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# Buffers some older checkpoints carry; they are recomputed from the config.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


@dataclasses.dataclass(frozen=True)
class TensorKey:
    hf_name: str
    param: str  # path in the param tree, e.g. "layers/attn/q"
    layer: int | None  # index on the stacked layer axis; None for unstacked params
    shape: tuple[int, ...]  # solar_jax shape (one layer's slice)
    hf_shape: tuple[int, ...]


def _layer_entries(c: ModelConfig):
    d, f, h = c.hidden_size, c.intermediate_size, c.head_dim
    n, k = c.num_heads, c.num_kv_heads
    # (HF suffix, param path, solar_jax shape, HF shape): q [N, H, D] is HF's [N*H, D].
    return [
        ("input_layernorm.weight", "layers/attn_norm/scale", (d,), (d,)),
        ("self_attn.q_proj.weight", "layers/attn/q", (n, h, d), (n * h, d)),
        ("self_attn.k_proj.weight", "layers/attn/k", (k, h, d), (k * h, d)),
        ("self_attn.v_proj.weight", "layers/attn/v", (k, h, d), (k * h, d)),
        ("self_attn.o_proj.weight", "layers/attn/o", (d, n, h), (d, n * h)),
        ("post_attention_layernorm.weight", "layers/mlp_norm/scale", (d,), (d,)),
        ("mlp.gate_proj.weight", "layers/mlp/gate", (f, d), (f, d)),
        ("mlp.up_proj.weight", "layers/mlp/up", (f, d), (f, d)),
        ("mlp.down_proj.weight", "layers/mlp/down", (d, f), (d, f)),
        *([("self_attn.q_proj.bias", "layers/attn/q_bias", (n, h), (n * h,)),
           ("self_attn.k_proj.bias", "layers/attn/k_bias", (k, h), (k * h,)),
           ("self_attn.v_proj.bias", "layers/attn/v_bias", (k, h), (k * h,))] if c.qkv_bias else []),
        *([("self_attn.o_proj.bias", "layers/attn/o_bias", (d,), (d,))] if c.o_bias else []),
        *([("self_attn.q_norm.weight", "layers/attn/q_norm/scale", (h,), (h,)),
           ("self_attn.k_norm.weight", "layers/attn/k_norm/scale", (h,), (h,))] if c.qk_norm else []),
    ]


def key_table(c: ModelConfig) -> list[TensorKey]:
    """Every HF tensor of a model with config `c`, in the order HF writes them."""
    v, d = c.vocab_size, c.hidden_size
    table = [TensorKey("model.embed_tokens.weight", "embed/embedding", None, (v, d), (v, d))]
    for i in range(c.num_layers):
        table += [TensorKey(f"model.layers.{i}.{suffix}", path, i, shape, hf_shape)
                  for suffix, path, shape, hf_shape in _layer_entries(c)]
    table.append(TensorKey("model.norm.weight", "final_norm/scale", None, (d,), (d,)))
    if not c.tie_word_embeddings:
        table.append(TensorKey("lm_head.weight", "lm_head/embedding", None, (v, d), (v, d)))
    return table


def param_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Full (stacked) shape of each param path."""
    shapes = {}
    for key in key_table(c):
        shapes[key.param] = key.shape if key.layer is None else (c.num_layers,) + key.shape
    return shapes


# ---- reading ----------------------------------------------------------------------------

def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SolarError(f"model_dir {model_dir} does not exist or is not a directory")
    path = model_dir / "config.json"
    if not path.is_file():
        raise SolarError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SolarError(f"{path}: invalid JSON ({e})") from None


class _TorchBinReader:
    """A pytorch_model*.bin shard opened with weights_only=True (no arbitrary unpickling)."""

    def __init__(self, path: Path):
        import torch  # conversion-only dependency

        try:
            self._tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for corrupt or unsafe files
            raise SolarError(f"{path}: cannot load with weights_only=True ({type(e).__name__})") from None
        self.path = str(path)

    def keys(self):
        return list(self._tensors)

    def shape(self, name):
        return tuple(self._tensors[name].shape)

    def read(self, name):
        import torch

        t = self._tensors[name]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def read_into(self, name, out):
        out[...] = self.read(name).reshape(out.shape)


def open_checkpoint(model_dir: str | Path) -> dict[str, Any]:
    """Maps each tensor name to a reader of the file holding it (nothing is loaded yet)."""
    model_dir = Path(model_dir)
    for index_name, single, reader in (
        ("model.safetensors.index.json", "model.safetensors", SafetensorsReader),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", _TorchBinReader),
    ):
        if (model_dir / index_name).is_file():
            try:
                weight_map = json.loads((model_dir / index_name).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise SolarError(f"{model_dir / index_name}: invalid index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (model_dir / single).is_file():
            weight_map, files = None, [single]
        else:
            continue
        sources: dict[str, Any] = {}
        for name in files:
            if not (model_dir / name).is_file():
                raise SolarError(f"{model_dir}: shard {name} named in the index is missing")
            shard = reader(model_dir / name)
            for key in shard.keys():
                if key in sources:
                    raise SolarError(f"duplicate tensor {key} in {sources[key].path} and {shard.path}")
                sources[key] = shard
        if weight_map is not None:
            for key, name in weight_map.items():
                if key not in sources:
                    raise SolarError(f"tensor {key} is listed in the index under {name} but is not in it")
        return sources
    raise SolarError(f"{model_dir}: no weights (expected model.safetensors, a sharded safetensors index, "
                     "or pytorch_model.bin)")


def checked_checkpoint(model_dir: str | Path, config: ModelConfig) -> tuple[dict[str, Any], bool]:
    """Opens a checkpoint and checks names and shapes against the key table (no weights read).

    Returns (tensor name -> reader, whether a redundant tied lm_head.weight is present).
    """
    sources = open_checkpoint(model_dir)
    table = key_table(config)
    by_name = {k.hf_name: k for k in table}
    unexpected = [n for n in sources if n not in by_name and not _IGNORED.fullmatch(n)]
    tied_copy = config.tie_word_embeddings and "lm_head.weight" in unexpected
    if tied_copy:  # some exporters write the tied head anyway; it must equal the embedding
        unexpected.remove("lm_head.weight")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise SolarError(f"unexpected tensor {unexpected[0]} in {sources[unexpected[0]].path}{more}")
    missing = [k.hf_name for k in table if k.hf_name not in sources]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SolarError(f"missing tensor {missing[0]} in {model_dir}{more}")
    for k in table:
        got = tuple(sources[k.hf_name].shape(k.hf_name))
        if got != k.hf_shape:
            raise SolarError(f"tensor {k.hf_name} has shape {got}, expected {k.hf_shape} from config.json")

    return sources, tied_copy


def load_hf_params(model_dir: str | Path, config: ModelConfig,
                   shardings: dict[str, jax.sharding.Sharding] | None = None) -> dict:
    """Reads all weights into a float32 param tree, one param path at a time.

    Everything is checked (names, shapes) before a byte of weights is read. Peak host
    memory is the float32 model plus one stacked param. `shardings` maps param paths to
    shardings to place them on a mesh as they are read.
    """
    sources, tied_copy = checked_checkpoint(model_dir, config)
    table = key_table(config)
    by_param: dict[str, list[TensorKey]] = defaultdict(list)
    for k in table:
        by_param[k.param].append(k)
    flat = {}
    for path, keys in by_param.items():
        full_shape = param_shapes(config)[path]
        host = np.empty(full_shape, np.float32)
        for k in keys:
            sources[k.hf_name].read_into(k.hf_name, host if k.layer is None else host[k.layer])
        sharding = (shardings or {}).get(path)
        flat[path] = jax.device_put(host, sharding) if sharding is not None else jax.device_put(host)
        del host
    if tied_copy:
        head = sources["lm_head.weight"].read("lm_head.weight").astype(np.float32)
        if not np.array_equal(head, np.asarray(flat["embed/embedding"])):
            raise SolarError("lm_head.weight differs from model.embed_tokens.weight although "
                             "config.json says tie_word_embeddings=true")
    return model_lib.unflatten_params(flat)


def load_hf(model_dir: str | Path, *, dtype: str = "float32", remat: str = "none",
            attention_impl: str = "xla") -> model_lib.Transformer:
    """An HF Llama/Mistral directory -> Transformer (float32 params, `dtype` compute)."""
    config = ModelConfig.from_hf_config(read_hf_config(model_dir))
    model_lib.dtype_from_name(dtype)  # fail on a bad name before reading weights
    params = load_hf_params(model_dir, config)
    model = model_lib.model_from_params(config, params, dtype=dtype, remat=remat, attention_impl=attention_impl)
    model.source_dir = str(model_dir)
    return model


# ---- writing ----------------------------------------------------------------------------

def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '1.5GiB' or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise SolarError(f"cannot read size {size!r} (examples: 5GB, 500MB, 1000000)")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit[0] in "KMGT" else 0
    return int(float(m.group(1)) * base**power)


def dtype_name_of(dtype) -> str:
    """The export name of a numpy dtype (bf16 via ml_dtypes); float32 for anything else."""
    return {np.dtype(v): k for k, v in EXPORT_DTYPES.items()}.get(np.dtype(dtype), "float32")


def export_dtype(name: str):
    if name not in EXPORT_DTYPES:
        raise SolarError(f"unknown dtype {name!r}; known: {', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[name]


def write_shards(out_dir: Path, specs: list[tuple[str, Any, tuple[int, ...]]],
                 produce: Callable[[str], np.ndarray], max_shard_bytes: int,
                 on_tensor: Callable[[str], None] | None = None) -> None:
    """Writes tensors (name, dtype, shape) in order into HF-named shards (+ index if > 1).

    `produce(name)` returns each array when its turn comes, so only one is in memory.
    """
    shards: list[list[tuple[str, Any, tuple[int, ...]]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = np.dtype(spec[1]).itemsize * int(np.prod(spec[2], dtype=np.int64))
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for file_name, shard in zip(names, shards):
        with SafetensorsWriter(out_dir / file_name, shard) as writer:
            for name, dtype, shape in shard:
                array = np.asarray(produce(name))
                writer.write(name, array)
                weight_map[name] = file_name
                total += array.nbytes
                if on_tensor:
                    on_tensor(name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(source_dir: str | Path | None, out_dir: Path, files: Iterable[str] = TOKENIZER_FILES) -> None:
    """Tokenizer files and generation_config.json from the source HF dir, when present."""
    if not source_dir:
        return
    for name in (*files, "generation_config.json"):
        src = Path(source_dir) / name
        if src.is_file():
            shutil.copy2(src, out_dir / name)


def write_config(out_dir: Path, config: ModelConfig, dtype_name: str, source_dir: str | Path | None) -> None:
    base = read_hf_config(source_dir) if source_dir and (Path(source_dir) / "config.json").is_file() else {}
    base.pop("torch_dtype", None)
    base.pop("quantization_config", None)
    hf = config.to_hf_config(base)
    hf["dtype"] = dtype_name
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")


def _to_host(array) -> np.ndarray:
    """A jax array (possibly spread over several processes) -> the whole numpy array."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def save_hf_params(params: dict, config: ModelConfig, out_dir: str | Path, *, dtype: str = "float32",
                   max_shard_size: int | str = "5GB", source_dir: str | Path | None = None,
                   overwrite: bool = False, on_tensor: Callable[[str], None] | None = None) -> Path:
    """Writes an HF dir atomically: config.json, sharded safetensors, tokenizer files."""
    target = export_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    flat = model_lib.flat_params(params)
    expected = param_shapes(config)
    for path, shape in expected.items():
        if path not in flat:
            raise SolarError(f"missing parameter {path}")
        if tuple(flat[path].shape) != shape:
            raise SolarError(f"parameter {path} has shape {tuple(flat[path].shape)}, expected {shape}")
    table = key_table(config)
    by_name = {k.hf_name: k for k in table}
    def produce(name: str) -> np.ndarray:
        k = by_name[name]
        # Slice on the device, transfer one tensor: host memory stays at one tensor.
        array = flat[k.param] if k.layer is None else flat[k.param][k.layer]
        return _to_host(array).reshape(k.hf_shape).astype(target, copy=False)

    if jax.process_index() != 0:
        # Multi-process: the gathers are collectives, so every process walks the tensors in
        # the writer's order; only process 0 writes.
        for k in table:
            produce(k.hf_name)
        return output_path(out_dir)
    with atomic_output_dir(out_dir, overwrite) as tmp:
        write_config(tmp, config, dtype, source_dir)
        copy_side_files(source_dir, tmp)
        write_shards(tmp, [(k.hf_name, target, k.hf_shape) for k in table], produce, max_bytes, on_tensor)
    return output_path(out_dir)


def save_hf(model: model_lib.Transformer, out_dir: str | Path, *, dtype: str = "float32",
            max_shard_size: int | str = "5GB", overwrite: bool = False,
            source_dir: str | Path | None = None) -> Path:
    """Transformer -> HF dir that `transformers` loads; tokenizer files from its source dir."""
    return save_hf_params(model_lib.param_dict(model), model.config, out_dir, dtype=dtype,
                          max_shard_size=max_shard_size, source_dir=source_dir or model.source_dir,
                          overwrite=overwrite)
