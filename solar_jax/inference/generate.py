"""Greedy and sampled decoding with a KV cache, jitted end to end.

Prompts are left-padded to one length P (padding is segment 0, which real tokens never
attend to); the cache holds P + max_new_tokens slots. One prefill pass fills it, then a
while_loop decodes one token per step until every row has emitted EOS or the budget is out.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from solar_jax.errors import SolarError
from solar_jax.models.transformer import Transformer


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None,
                  top_p: float | None) -> jax.Array:
    """logits [B, V] float32 -> tokens [B]; temperature 0 is greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        # Keep the smallest set of tokens whose probability mass reaches top_p.
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(graphdef, state, tokens, segment_ids, key, eos_ids, pad_id, *, max_new_tokens,
              temperature, top_k, top_p):
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    cache = model.init_cache(b, p + max_new_tokens)
    logits, cache, _ = model.forward(tokens, positions, segment_ids, cache)
    key, sub = jax.random.split(key)
    first = sample_logits(logits[:, -1], sub, temperature, top_k, top_p)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos_ids)
    next_pos = positions[:, -1] + 1

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, token, pos, cache, done, out, key = carry
        logits, cache, _ = model.forward(token[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache)
        key, sub = jax.random.split(key)
        new = sample_logits(logits[:, -1], sub, temperature, top_k, top_p)
        new = jnp.where(done, pad_id, new)
        out = out.at[:, step].set(new)
        done = done | jnp.isin(new, eos_ids)
        return step + 1, new, pos + 1, cache, done, out, key

    carry = (jnp.array(1), first, next_pos, cache, done, out, key)
    return jax.lax.while_loop(cond, body, carry)[5]


def generate(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             seed: int = 0, pad_to: int = 0) -> list[list[int]]:
    """Continues each prompt (a list of token ids); returns the new tokens of each row,
    up to and including the first EOS. temperature=0 is greedy (argmax). pad_to: left-pad
    prompts to at least this length (fewer shapes to compile across calls)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SolarError("generate needs at least one non-empty prompt")
    if max_new_tokens < 1:
        raise SolarError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(max(len(p) for p in prompts), pad_to)
    if longest + max_new_tokens > model.config.max_position_embeddings:
        raise SolarError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_position_embeddings ({model.config.max_position_embeddings})")
    tokens = np.full((len(prompts), longest), pad_token_id, np.int32)
    segments = np.zeros((len(prompts), longest), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = p
        segments[i, longest - len(p):] = 1
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    eos_ids = jnp.asarray(eos or [-1], jnp.int32)
    graphdef, state = nnx.split(model)
    out = np.asarray(_generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments),
                               jax.random.key(seed), eos_ids, jnp.int32(pad_token_id),
                               max_new_tokens=max_new_tokens, temperature=float(temperature),
                               top_k=top_k, top_p=top_p))
    results = []
    for row in out:
        row = row.tolist()
        ends = [i for i, t in enumerate(row) if t in eos]
        results.append(row[: ends[0] + 1] if ends else row)
    return results
