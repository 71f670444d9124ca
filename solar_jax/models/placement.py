"""Where a model's activations and scanned layer weights live on a device mesh.

The sharding rules (parallel/sharding.py, the one place that names mesh axes) decide it and
hand the model a Placement; the model applies it as sharding constraints while it is traced
under that mesh (jax.set_mesh). A model without a Placement, or traced with no mesh, leaves
every layout to XLA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import PartitionSpec


@dataclasses.dataclass(frozen=True)
class Placement:
    # Mesh axes that split the batch dim of activations [B, ...], and the product of their
    # sizes (a batch it does not divide, such as one row of a DPO reference pass, is left
    # to XLA).
    batch_axes: tuple[str, ...] = ()
    batch_shards: int = 1
    # The mesh axis that splits attention heads (q's and k/v's alike), for kernels XLA does
    # not partition (splash runs per device under shard_map); None: heads whole.
    head_axis: str | None = None
    # One scanned layer's weights: param path without "layers/" ("attn/q") -> PartitionSpec
    # without the layers axis; sorted pairs, so that the placement is hashable (it is part
    # of the module's graphdef, a static argument of jit).
    layer_weights: tuple[tuple[str, PartitionSpec], ...] = ()


def _applies(placement: Placement | None) -> bool:
    return placement is not None and not jax.sharding.get_abstract_mesh().empty


def batch_sharded(x: jax.Array, placement: Placement | None) -> jax.Array:
    """Keeps activations [B, ...] split by batch. FSDP shards the weights' embed axis too,
    and without this constraint XLA's propagation may lay activations out by features
    instead, keeping whole-batch activations on every device (several times the compiled
    temporary memory with fsdp=4)."""
    if not _applies(placement) or not placement.batch_axes or x.shape[0] % placement.batch_shards:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(placement.batch_axes))


def constrain_layer_weights(state: nnx.State, placement: Placement | None) -> nnx.State:
    """Each scanned layer's weights (one slice of the stacked params) kept at their stacked
    layout. The transpose of a sharding constraint constrains the cotangent, so each layer's
    gradient is reduced to its FSDP shard inside the backward loop (by reduce-scatter, or
    all-reduce where XLA prefers it), instead of the whole stacked gradient being reduced,
    and held, after it (seen on v5p-128: whole [L, F, D] gradients all-reduced without it)."""
    if not _applies(placement) or not placement.layer_weights:
        return state
    specs = dict(placement.layer_weights)

    def constrain(tree, prefix=""):
        return {k: constrain(v, f"{prefix}{k}/") if isinstance(v, dict) else
                jax.lax.with_sharding_constraint(v, specs[f"{prefix}{k}"]) for k, v in tree.items()}

    nnx.replace_by_pure_dict(state, constrain(nnx.to_pure_dict(state)))
    return state


def per_device_specs(placement: Placement | None, batch: int) -> tuple[Any, Any] | None:
    """shard_map specs for attention run per device: (q/k/v [B, T, N|K, H], segment ids
    [B, T]), or None when the trace has no mesh or placement (run it whole)."""
    if not _applies(placement):
        return None
    rows = placement.batch_axes if placement.batch_axes and batch % placement.batch_shards == 0 else None
    return PartitionSpec(rows, None, placement.head_axis, None), PartitionSpec(rows, None)
