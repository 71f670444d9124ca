"""What a train step minimises: next-token cross-entropy (cpt, sft) or a DPO loss.

An objective maps (params, microbatch, reference params) to (loss sum, metric sums); the
step divides both by a denominator computed once from the whole global batch (tokens for
cross-entropy, pairs for DPO), so gradient accumulation over microbatches gives exactly the
full-batch result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.training.losses import cross_entropy, dpo_loss, sequence_log_probs


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: Callable[[Any, dict, Any], tuple[jax.Array, dict[str, jax.Array]]]
    denominator: Callable[[dict], jax.Array]
    needs_reference: bool = False


def cross_entropy_objective(graphdef) -> Objective:
    def loss(params, mb, ref=None):
        logits = nnx.merge(graphdef, params)(mb["inputs"], None, mb["segment_ids"])
        total, _ = cross_entropy(logits, mb["targets"], mb["loss_mask"])
        return total, {}

    return Objective(loss, lambda b: jnp.maximum(b["loss_mask"].sum(), 1.0))


def _pair_logps(model, mb, average: bool) -> tuple[jax.Array, jax.Array]:
    """One forward pass over chosen and rejected rows stacked on the batch axis: ([B], [B])."""
    cat = lambda name: jnp.concatenate([mb[f"chosen_{name}"], mb[f"rejected_{name}"]], axis=0)
    logits = model(cat("inputs"), None, cat("segment_ids"))
    lp = sequence_log_probs(logits, cat("targets"), cat("loss_mask"), average=average)
    b = mb["chosen_inputs"].shape[0]
    return lp[:b], lp[b:]


def dpo_objective(graphdef, beta: float, loss_type: str, label_smoothing: float, precomputed: bool) -> Objective:
    """DPO on {chosen, rejected} rows; the reference is a frozen copy (under stop_gradient)
    or log-probs precomputed with the initial model (batch fields ref_chosen_logps, ...)."""
    average = loss_type == "ipo"  # IPO uses length-normalised log-probs

    def loss(params, mb, ref=None):
        pc, pr = _pair_logps(nnx.merge(graphdef, params), mb, average)
        if precomputed:
            rc, rr = mb["ref_chosen_logps"], mb["ref_rejected_logps"]
        else:
            rc, rr = _pair_logps(nnx.merge(graphdef, jax.lax.stop_gradient(ref)), mb, average)
        losses, cr, rr_ = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing)
        valid = (mb["chosen_loss_mask"].sum(axis=-1) > 0).astype(jnp.float32)  # eval batches pad with empty rows
        metrics = {
            "rewards/chosen": cr, "rewards/rejected": rr_, "rewards/accuracies": (cr > rr_).astype(jnp.float32),
            "rewards/margins": cr - rr_, "logps/chosen": jax.lax.stop_gradient(pc),
            "logps/rejected": jax.lax.stop_gradient(pr),
        }
        return jnp.sum(losses * valid), {k: jnp.sum(v * valid) for k, v in metrics.items()}

    def denominator(b):
        return jnp.maximum((b["chosen_loss_mask"].sum(axis=-1) > 0).sum().astype(jnp.float32), 1.0)

    return Objective(loss, denominator, needs_reference=not precomputed)


def reference_logps_fn(graphdef, average: bool):
    """(params, batch) -> (ref chosen logps [B], ref rejected logps [B]) for precomputing."""
    def fn(params, mb):
        return _pair_logps(nnx.merge(graphdef, params), mb, average)

    return fn
