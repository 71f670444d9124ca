"""Llama / Mistral / Qwen2 / Qwen3 decoder in Flax NNX, numerically matched to `transformers`.

Einsum letters: B batch, T query length, S key length, D model width, N query heads,
K kv heads, G = N // K, H head dim, F mlp width, V vocab, L layers.

Weights keep Hugging Face's axis order (q: [N, H, D], o: [D, N, H], gate: [F, D]) so that
import and export are reshapes, never transposes. Decoder layers are stacked: every layer
tensor has a leading axis L (created with nnx.vmap, applied with lax.scan), which makes
depth up-scaling a concat on axis 0 and merging a tree.map.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.models import attention as attention_lib
from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig, rope_inv_freq
from solar_jax.models.placement import Placement, batch_sharded, constrain_layer_weights

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# The vocab projection's output: float32 (accumulated and kept in float32, the default), or
# compute (the compute dtype, as MaxText's default and transformers under bf16 autocast, then
# float32 for the softmax: half the logits' memory, bf16-rounded logits).
LOGITS_DTYPES = ("float32", "compute")
ATTENTION_IMPLS = attention_lib.IMPLS

# Logical axes of every parameter, by path in the state tree: the single source that the
# sharding rules map onto mesh axes.
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed/embedding": ("vocab", "embed"),
    "layers/attn_norm/scale": ("layers", "norm"),
    "layers/attn/q": ("layers", "heads", "head_dim", "embed"),
    "layers/attn/k": ("layers", "kv_heads", "head_dim", "embed"),
    "layers/attn/v": ("layers", "kv_heads", "head_dim", "embed"),
    "layers/attn/o": ("layers", "embed", "heads", "head_dim"),
    # Qwen2/Qwen3 (and Llama's attention_bias): biases split like their projection's output,
    # o's bias [D] replicated as a norm is; q/k norms over the head dim.
    "layers/attn/q_bias": ("layers", "heads", "head_dim"),
    "layers/attn/k_bias": ("layers", "kv_heads", "head_dim"),
    "layers/attn/v_bias": ("layers", "kv_heads", "head_dim"),
    "layers/attn/o_bias": ("layers", "norm"),
    "layers/attn/q_norm/scale": ("layers", "head_dim"),
    "layers/attn/k_norm/scale": ("layers", "head_dim"),
    "layers/mlp_norm/scale": ("layers", "norm"),
    "layers/mlp/gate": ("layers", "mlp", "embed"),
    "layers/mlp/up": ("layers", "mlp", "embed"),
    "layers/mlp/down": ("layers", "embed", "mlp"),
    "final_norm/scale": ("norm",),
    "lm_head/embedding": ("vocab", "embed"),
}


def dtype_from_name(name: str) -> Any:
    if name not in DTYPES:
        raise SolarError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


def _init(rngs: nnx.Rngs, shape: tuple[int, ...]) -> jax.Array:
    # transformers initialises Llama linear and embedding weights with N(0, 0.02).
    return 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype: Any):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # As HF: normalise in float32, cast back to the compute dtype, then scale.
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


def rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """HF rotate-half RoPE. x: [B, T, N, H]; sin, cos: [B, T, H/2] in float32."""
    h2 = x.shape[-1] // 2
    x1, x2 = x[..., :h2], x[..., h2:]
    sin = sin[:, :, None, :].astype(x.dtype)
    cos = cos[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] int -> (sin, cos) [B, T, H/2], float32 as HF computes them."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def tree_attention_mask(items, reach, positions, sliding_window: int | None):
    """Boolean [B, 1, T, T] for rows of items laid out depth-first (inference/packing.py):
    query q sees key k iff same item and k <= q <= reach[k] (k is q or an ancestor of q),
    and inside the sliding window by position, as in each branch's own sequence."""
    q, k = jnp.arange(items.shape[1])[:, None], jnp.arange(items.shape[1])[None, :]
    mask = (items[:, :, None] == items[:, None, :]) & (k <= q) & (q <= reach[:, None, :])
    if sliding_window is not None:
        mask &= positions[:, None, :] > positions[:, :, None] - sliding_window
    return mask[:, None, :, :]


def attention_mask(q_segments, kv_segments, q_index, kv_index, sliding_window: int | None):
    """Boolean [B, 1, T, S]: same segment, causal by index, and inside the sliding window.

    Segments are ints, 0 for padding; padding attends to padding, so no row is empty.
    q_index [B, T] and kv_index [S] are absolute indices in the sequence (or cache), so
    causality and the window follow HF (by index), while RoPE uses per-segment positions.
    """
    same = q_segments[:, :, None] == kv_segments[:, None, :]
    causal = kv_index[None, None, :] <= q_index[:, :, None]
    mask = same & causal
    if sliding_window is not None:
        mask &= kv_index[None, None, :] > q_index[:, :, None] - sliding_window
    return mask[:, None, :, :]


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, dtype: Any, impl: str, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q = nnx.Param(_init(rngs, (n, h, d)))
        self.k = nnx.Param(_init(rngs, (k, h, d)))
        self.v = nnx.Param(_init(rngs, (k, h, d)))
        self.o = nnx.Param(_init(rngs, (d, n, h)))
        # Optional parts (None: absent from the param tree). Biases start at zero, norms at
        # one, as transformers initialises them.
        zeros = lambda *shape: nnx.Param(jnp.zeros(shape, jnp.float32))  # noqa: E731
        self.q_bias = zeros(n, h) if config.qkv_bias else None
        self.k_bias = zeros(k, h) if config.qkv_bias else None
        self.v_bias = zeros(k, h) if config.qkv_bias else None
        self.o_bias = zeros(d) if config.o_bias else None
        self.q_norm = RMSNorm(h, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.k_norm = RMSNorm(h, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.dtype, self.impl, self.window = dtype, impl, config.sliding_window

    def _project(self, x, weight, bias, norm, spec: str):
        """x [B, T, D] -> heads [B, T, N|K, H]: the projection, its bias, its per-head norm
        (transformers' order: Linear with bias, view as heads, q_norm/k_norm)."""
        y = jnp.einsum(spec, x, weight[...].astype(self.dtype))
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return y if norm is None else norm(y)

    def __call__(self, x, sin, cos, mask, cache=None, placement: Placement | None = None):
        """x [B, T, D]; mask [B, 1, T, S] bool, or segment ids [B, T] for splash (training);
        cache (k [B, S, K, H], v [B, S, K, H], index) or None."""
        cast = lambda p: p[...].astype(self.dtype)
        q = rotary(self._project(x, self.q, self.q_bias, self.q_norm, "BTD,NHD->BTNH"), sin, cos)
        k = rotary(self._project(x, self.k, self.k_bias, self.k_norm, "BTD,KHD->BTKH"), sin, cos)
        v = self._project(x, self.v, self.v_bias, None, "BTD,KHD->BTKH")
        new_cache = None
        if cache is not None:
            k_cache, v_cache, index = cache
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
            new_cache = (k, v)
        k, v = k.astype(self.dtype), v.astype(self.dtype)
        if self.impl == "splash" and cache is None:
            out = attention_lib.splash(q, k, v, mask, self.window, placement)
        else:
            out = attention_lib.dense(q, k, v, mask, self.impl)
        out = jnp.einsum("BTNH,DNH->BTD", out, cast(self.o))
        return (out if self.o_bias is None else out + cast(self.o_bias)), new_cache


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate = nnx.Param(_init(rngs, (f, d)))
        self.up = nnx.Param(_init(rngs, (f, d)))
        self.down = nnx.Param(_init(rngs, (d, f)))
        self.dtype = dtype

    def __call__(self, x):
        cast = lambda p: p[...].astype(self.dtype)
        gate = jnp.einsum("BTD,FD->BTF", x, cast(self.gate))
        up = jnp.einsum("BTD,FD->BTF", x, cast(self.up))
        return jnp.einsum("BTF,DF->BTD", jax.nn.silu(gate) * up, cast(self.down))


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, dtype: Any, impl: str, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.attn = Attention(config, dtype, impl, rngs)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype, rngs)

    def __call__(self, x, sin, cos, mask, cache=None, placement: Placement | None = None):
        h, new_cache = self.attn(self.attn_norm(x), sin, cos, mask, cache, placement)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_cache


def _remat(fn, policy: str, prevent_cse: bool = False):
    """prevent_cse: only for a fully unrolled layer loop. Inside a loop, the backward pass's
    recomputation cannot be merged with the forward pass (they are different loops); once
    unrolled into one straight-line program, XLA's CSE merges parts of them and keeps what
    the policy meant to drop (at 10.7B, over half again the temporaries without it:
    docs/results/defaults)."""
    if policy == "none":
        return fn
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=prevent_cse)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its segment: [B, T] -> [B, T] (0 at each start)."""
    t = jnp.arange(segment_ids.shape[1])[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start_index = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
    return t - start_index


@jax.custom_vjp
def logits_matmul(x: jax.Array, table: jax.Array) -> jax.Array:
    """x [..., D] @ table [V, D]^T -> logits [..., V] in float32, accumulated in float32
    whatever the compute dtype of x and table."""
    return jnp.einsum("...D,VD->...V", x, table, preferred_element_type=jnp.float32)


def _logits_matmul_fwd(x, table):
    return logits_matmul(x, table), (x, table)


def _logits_matmul_bwd(residuals, g):
    # The float32 cotangent g [..., V] is cast to the compute dtype before the two backward
    # matmuls, as every other matmul of the step takes its cotangent: the table's gradient is
    # then made and reduced across devices in bf16 under bf16 compute (autodiff's default keeps
    # it float32: twice the bytes over ICI and through HBM). A float32 model is unchanged.
    x, table = residuals
    g = g.astype(x.dtype)
    return jnp.einsum("...V,VD->...D", g, table), jnp.einsum("...V,...D->VD", g, x)


logits_matmul.defvjp(_logits_matmul_fwd, _logits_matmul_bwd)


class Transformer(nnx.Module):
    """The decoder: embed -> L stacked layers -> norm -> logits (float32)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: str = "float32",
                 remat: str = "none", attention_impl: str = "xla", scan_unroll: int = 1,
                 logits_dtype: str = "float32", placement: Placement | None = None):
        """placement: where activations and layer weights live on the mesh the model is traced
        under (parallel/sharding.py's model_placement); None leaves it to XLA."""
        if remat not in REMAT_POLICIES:
            raise SolarError(f"unknown remat policy {remat!r}; known: {', '.join(REMAT_POLICIES)}")
        if logits_dtype not in LOGITS_DTYPES:
            raise SolarError(f"unknown logits_dtype {logits_dtype!r}; known: {', '.join(LOGITS_DTYPES)}")
        if scan_unroll < 1:
            raise SolarError(f"scan_unroll must be at least 1 (layers per loop iteration), got {scan_unroll}")
        if attention_impl not in ATTENTION_IMPLS:
            raise SolarError(f"unknown attention_impl {attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
        self.config = config
        self.dtype_name, self.remat, self.attention_impl = dtype, remat, attention_impl
        # Layers per iteration of the layer loop (lax.scan's unroll): 1 compiles one layer's
        # body; num_layers or more unrolls the loop (more code and compile time; XLA then
        # schedules and fuses across layers). The params stay stacked either way.
        self.scan_unroll = min(scan_unroll, config.num_layers)
        self.logits_dtype = logits_dtype
        self.placement = placement
        self.source_dir: str | None = None  # HF dir it came from: tokenizer files for export
        compute = dtype_from_name(dtype)
        self.embed = nnx.Embed(config.vocab_size, config.hidden_size, param_dtype=jnp.float32,
                               dtype=compute, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)

        self.kernel = attention_lib.resolve(attention_impl, dtype=dtype)  # "auto" -> this platform's kernel

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs):
            return DecoderLayer(config, compute, self.kernel, rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, compute)
        self.lm_head = None if config.tie_word_embeddings else nnx.Embed(
            config.vocab_size, config.hidden_size, param_dtype=jnp.float32, dtype=compute,
            embedding_init=nnx.initializers.normal(0.02), rngs=rngs)

    @property
    def options(self) -> dict[str, Any]:
        """Run options to rebuild an equivalent module around new params or a new config."""
        return dict(dtype=self.dtype_name, remat=self.remat, attention_impl=self.attention_impl,
                    scan_unroll=self.scan_unroll, logits_dtype=self.logits_dtype, placement=self.placement)

    def __call__(self, tokens, positions=None, segment_ids=None):
        """tokens int [B, T] -> logits float32 [B, T, V].

        segment_ids [B, T]: documents of a packed row (1, 2, ...) and padding (0); attention
        never crosses segments. positions [B, T]: default, the index inside each segment.
        """
        logits, _, _ = self.forward(tokens, positions, segment_ids)
        return logits

    def forward(self, tokens, positions=None, segment_ids=None, cache=None, return_hidden=False):
        """The full pass. cache: a dict from `init_cache` (decoding) or None (training).

        Returns (logits [B, T, V], new cache or None, hidden states [L+1, B, T, D] or None).
        """
        x, new_cache, hidden = self.trunk(tokens, positions, segment_ids, cache, return_hidden)
        return self.unembed(x), new_cache, hidden

    def unembed(self, x: jax.Array) -> jax.Array:
        """Final hidden states [..., D] -> logits [..., V] (float32)."""
        table = (self.embed if self.lm_head is None else self.lm_head).embedding[...].astype(x.dtype)
        if self.logits_dtype == "compute":  # rounded to the compute dtype, then float32 for the softmax
            return jnp.einsum("...D,VD->...V", x, table).astype(jnp.float32)
        return logits_matmul(x, table)

    def trunk(self, tokens, positions=None, segment_ids=None, cache=None, return_hidden=False, mask=None):
        """Everything but the vocab projection: (final-normed states [B, T, D], new cache or
        None, hidden states [L+1, B, T, D] or None). mask: a boolean [B, 1, T, T] attention
        mask to use instead of the segment/causal/window one (dense kernels, no cache);
        positions must then be given."""
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = segment_positions(segment_ids)
        if mask is not None:
            if cache is not None or self.kernel == "splash":
                raise SolarError("an explicit attention mask needs a dense kernel and no cache")
        elif cache is None and self.kernel == "splash":
            mask = segment_ids  # the kernel builds causal/window blocks itself: no [T, T] mask
        elif cache is None:
            q_index = jnp.broadcast_to(jnp.arange(t), (b, t))
            mask = attention_mask(segment_ids, segment_ids, q_index, jnp.arange(t), self.config.sliding_window)
        else:
            index = cache["index"]
            kv_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, index))
            q_index = jnp.broadcast_to(index + jnp.arange(t), (b, t))
            kv_index = jnp.arange(kv_segments.shape[1])
            # Cache slots beyond index + T are in the future of every query: causality hides them.
            mask = attention_mask(segment_ids, kv_segments, q_index, kv_index, self.config.sliding_window)
        sin, cos = rope_tables(self.config, positions)
        x = batch_sharded(self.embed(tokens), self.placement)

        graphdef, layer_state = nnx.split(self.layers)

        def body(x, xs):
            state, layer_cache = xs
            layer = nnx.merge(graphdef, constrain_layer_weights(state, self.placement))
            x, new_layer_cache = layer(x, sin, cos, mask, layer_cache, self.placement)
            x = batch_sharded(x, self.placement)
            return x, (new_layer_cache, x if return_hidden else None)

        layer_caches = None if cache is None else (cache["k"], cache["v"], jnp.broadcast_to(
            cache["index"], (self.config.num_layers,)))
        x_in = x
        unrolled = self.scan_unroll >= self.config.num_layers
        x, (new_kv, hidden) = jax.lax.scan(_remat(body, self.remat, prevent_cse=unrolled), x,
                                           (layer_state, layer_caches), unroll=self.scan_unroll)
        x = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = dict(k=new_kv[0], v=new_kv[1], segment_ids=kv_segments, index=cache["index"] + t)
        if return_hidden:
            hidden = jnp.concatenate([x_in[None], hidden], axis=0)
        return x, new_cache, hidden

    def init_cache(self, batch: int, max_len: int, dtype: str | None = None) -> dict[str, jax.Array]:
        """KV cache for decoding: k, v [L, B, S, K, H]; segment ids [B, S] (0 = empty)."""
        c = self.config
        dt = dtype_from_name(dtype or self.dtype_name)
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        return dict(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt),
                    segment_ids=jnp.zeros((batch, max_len), jnp.int32), index=jnp.array(0, jnp.int32))


def abstract_model(config: ModelConfig, **options) -> Transformer:
    """The module with ShapeDtypeStructs in place of arrays: no memory, no random init."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), **options))


def model_from_params(config: ModelConfig, params: dict, **options) -> Transformer:
    """Builds a Transformer around a pure-dict param tree (as `nnx.to_pure_dict` gives)."""
    graphdef, state = nnx.split(abstract_model(config, **options))
    expected = nnx.to_pure_dict(state)
    got_paths = {"/".join(map(str, p)): v for p, v in _flatten(params)}
    for path, leaf in _flatten(expected):
        key = "/".join(map(str, path))
        if key not in got_paths:
            raise SolarError(f"missing parameter {key}")
        if tuple(got_paths[key].shape) != tuple(leaf.shape):
            raise SolarError(f"parameter {key} has shape {tuple(got_paths[key].shape)}, expected {tuple(leaf.shape)}")
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def param_dict(model: Transformer) -> dict:
    """The params as a nested dict of arrays (no NNX wrappers)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def flat_params(tree: dict) -> dict[str, Any]:
    """{'layers/attn/q': array, ...} from a nested param dict."""
    return {"/".join(map(str, p)): v for p, v in _flatten(tree)}


def unflatten_params(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
