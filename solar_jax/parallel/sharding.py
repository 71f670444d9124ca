"""Mesh and shardings: one table maps logical axes (model.PARAM_AXES) to mesh axes. This is
the only module that names mesh axes; the model gets what it needs as a Placement.

Mesh axes: data (pure data parallel: params replicated), fsdp (data parallel with params,
grads and optimizer state sharded), tensor (Megatron-style: heads and mlp split). Switching
between FSDP and tensor parallelism is a config edit of mesh.{data,fsdp,tensor}.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from solar_jax.errors import SolarError
from solar_jax.models.placement import Placement
from solar_jax.models.transformer import PARAM_AXES

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes) it is split over; None: replicated.
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
}


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 to fill the devices; checks the product."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise SolarError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise SolarError(f"mesh sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise SolarError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise SolarError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
                         f"devices, but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (sharding propagated by XLA)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    except NotImplementedError:
        # A TPU torus whose axes the mesh's sizes do not match one to one (data=2 x fsdp=128
        # on a 16 x 16 v6e-256): let a mesh axis take part of a physical axis.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def spec_for(logical: Sequence[str], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for an array with these logical axes; a dim that its mesh axes do not
    divide is replicated instead (e.g. 9 heads over tensor=2)."""
    parts = []
    used: set[str] = set()
    for name, dim in zip(logical, shape):
        axes = RULES.get(name)
        if axes is None:
            parts.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            parts.append(None)
            continue
        used.update(axes)
        parts.append(axes[0] if len(axes) == 1 else axes)
    return P(*parts)


def param_shardings(flat_shapes: dict[str, Sequence[int]], mesh: Mesh) -> dict[str, NamedSharding]:
    """Flat param path -> NamedSharding, from the logical axes table."""
    out = {}
    for path, shape in flat_shapes.items():
        if path not in PARAM_AXES:
            raise SolarError(f"no logical axes for parameter {path}")
        out[path] = NamedSharding(mesh, spec_for(PARAM_AXES[path], shape, mesh))
    return out


def model_placement(flat_shapes: dict[str, Sequence[int]], mesh) -> Placement:
    """What the model applies under this mesh (models/placement.py), from the same rules as
    the params: activations split by batch like the batches, attention heads split like q's
    and k's heads (when both split the same way), and each scanned layer's weights kept as
    the stacked params are split. flat_shapes: the stacked params' shapes by path; mesh: a
    Mesh, or the AbstractMesh of a trace."""
    batch = spec_for(("batch",), (data_parallel_size(mesh),), mesh)[0]
    q_heads = spec_for(PARAM_AXES["layers/attn/q"], flat_shapes["layers/attn/q"], mesh)[1]
    kv_heads = spec_for(PARAM_AXES["layers/attn/k"], flat_shapes["layers/attn/k"], mesh)[1]
    layer_weights = {path.removeprefix("layers/"): spec_for(PARAM_AXES[path][1:], shape[1:], mesh)
                     for path, shape in flat_shapes.items() if path.startswith("layers/")}
    return Placement(batch_axes=() if batch is None else (batch,) if isinstance(batch, str) else tuple(batch),
                     batch_shards=data_parallel_size(mesh) if batch is not None else 1,
                     head_axis=q_heads if q_heads == kv_heads else None,
                     layer_weights=tuple(sorted(layer_weights.items())))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batches [B, ...]: B split over data x fsdp, the other axes whole."""
    logical = ("batch",) + (None,) * (ndim - 1)
    return NamedSharding(mesh, spec_for(logical, (data_parallel_size(mesh),) + (1,) * (ndim - 1), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def local_rows(mesh: Mesh, batch_size: int) -> list[int]:
    """The rows of a [batch_size, ...] batch that this process's devices hold."""
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((batch_size,))
    return sorted({r for (rows,) in index_map.values() for r in range(batch_size)[rows]})


def put_local_rows(batch: dict[str, np.ndarray], rows: list[int], batch_size: int, mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch (batch[k][j] is global row rows[j]) -> global
    arrays sharded over data x fsdp, as put_global_batch makes from the whole batch."""
    position = {r: j for j, r in enumerate(rows)}
    out = {}
    for key, local in batch.items():
        shape = (batch_size,) + local.shape[1:]

        def fetch(index, local=local):
            picked = [position[r] for r in range(batch_size)[index[0]]]
            return local[picked][(slice(None),) + tuple(index[1:])]

        out[key] = jax.make_array_from_callback(shape, batch_sharding(mesh, local.ndim), fetch)
    return out


def put_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch (the same numpy rows on every process) -> global arrays sharded
    over data x fsdp; each process copies only the rows of its own devices."""
    out = {}
    for key, rows in batch.items():
        out[key] = jax.make_array_from_callback(rows.shape, batch_sharding(mesh, rows.ndim),
                                                lambda index, rows=rows: rows[index])
    return out
