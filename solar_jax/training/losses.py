"""Losses as small pure functions over logits, targets and masks, in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from solar_jax.inference.log_probs import token_log_probs


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked next-token cross-entropy: (sum of -log p over masked tokens, token count)."""
    nll = -token_log_probs(logits, targets)
    mask = mask.astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def sequence_log_probs(logits: jax.Array, targets: jax.Array, mask: jax.Array, average: bool = False) -> jax.Array:
    """Sum (or mean, for IPO) of log p(target) over the masked (completion) tokens: [B]."""
    lp = token_log_probs(logits, targets) * mask
    total = lp.sum(axis=-1)
    return total / jnp.maximum(mask.sum(axis=-1), 1.0) if average else total


DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """TRL's DPO losses on sequence log-probs [B]; returns (losses, chosen_rewards, rejected_rewards).

    h = (pi_c - pi_r) - (ref_c - ref_r). sigmoid: -log s(beta h) (1 - e) - log s(-beta h) e
    (e = label_smoothing: cDPO); robust: (-log s(beta h)(1 - e) + log s(-beta h) e) / (1 - 2e);
    hinge: relu(1 - beta h); ipo: (h - 1/(2 beta))^2 on length-normalised log-probs.
    Beta is applied once. The reference enters through stop_gradient.
    """
    ref_chosen, ref_rejected = jax.lax.stop_gradient(ref_chosen), jax.lax.stop_gradient(ref_rejected)
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -jax.nn.log_sigmoid(beta * h) * (1 - label_smoothing) - jax.nn.log_sigmoid(-beta * h) * label_smoothing
    elif loss_type == "robust":
        losses = (-jax.nn.log_sigmoid(beta * h) * (1 - label_smoothing)
                  + jax.nn.log_sigmoid(-beta * h) * label_smoothing) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; known: {', '.join(DPO_LOSSES)}")
    chosen_rewards = beta * jax.lax.stop_gradient(policy_chosen - ref_chosen)
    rejected_rewards = beta * jax.lax.stop_gradient(policy_rejected - ref_rejected)
    return losses, chosen_rewards, rejected_rewards
