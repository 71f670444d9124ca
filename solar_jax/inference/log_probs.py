"""Log-probabilities of given tokens under a model's logits: what scoring, evaluation and
the training losses all start from."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per token: logits [B, T, V], targets [B, T] -> [B, T] float32."""
    logits = logits.astype(jnp.float32)
    # A one-hot select instead of take_along_axis: it fuses into one pass over [B, T, V], and
    # its gradient is an elementwise select rather than a scatter (docs/results/defaults).
    vocab = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
    picked = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
    return picked - jax.nn.logsumexp(logits, axis=-1)
