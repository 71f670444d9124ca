"""The train state: where the weights come from, and its shapes and shardings on a mesh.

State (a dict, the pytree orbax saves): step (int32, replicated), params (float32 masters,
sharded by the logical-axis rules), opt_state (sharded like its params), rng (replicated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig, preset
from solar_jax.surgery import upscale as upscale_lib
from solar_jax.parallel import sharding
from solar_jax.training.checkpoint import abstract_like
from solar_jax.training.optim import make_optimizer
from solar_jax.weights import hf, paths
from solar_jax.weights.real_model import ensure_real_model


@dataclasses.dataclass
class ModelSource:
    """Where the weights come from and what the trained model looks like."""

    config: ModelConfig  # after up-scaling
    base_config: ModelConfig
    model_dir: str | None  # HF dir (weights, tokenizer files); None for a preset
    slices: list | None  # up-scaling slices, or None
    init: str = "copy"  # how repeated layers start (surgery/upscale.py INITS)
    train: str = "all"  # all | new: only the repeated layers learn (LLaMA Pro); the rest is frozen


def resolve_model(c) -> ModelSource:
    """The run config's model: model_preset (random), model_dir, or the real model when
    model_dir is empty; up-scaled by upscale_slices or upscale_m >= 0."""
    if c.model_preset:
        base = preset(c.model_preset)
        model_dir = None
    else:
        # A remote model dir (gs://...) is read from a local copy (weights/paths.py).
        model_dir = str(paths.local_copy(c.model_dir)) if c.model_dir else str(ensure_real_model())
        base = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    slices = None
    if c.upscale_slices:
        slices = upscale_lib.resolve_slices(c.upscale_slices, base.num_layers)
    elif c.upscale_m >= 0:
        slices = upscale_lib.solar_slices(base.num_layers, c.upscale_m)
    config = upscale_lib.check_slices(slices, [base]) if slices else base
    upscale_lib.check_init(c.upscale_init)  # one line, before any work
    if c.upscale_train not in UPSCALE_TRAIN:
        raise SolarError(f"unknown upscale_train {c.upscale_train!r}; known: {', '.join(UPSCALE_TRAIN)}")
    if c.upscale_train == "new" and not (slices and any(upscale_lib.repeated_layers(slices))):
        raise SolarError("upscale_train=new trains only the repeated layers of an up-scaling: set upscale_m "
                         "or upscale_slices (e.g. expand:4) so that some layer repeats")
    return ModelSource(config, base, model_dir, slices, c.upscale_init, c.upscale_train)


UPSCALE_TRAIN = ("all", "new")


def trainable_mask(source: ModelSource) -> dict | None:
    """None when everything trains; else a tree like the params of multipliers on their
    gradients and updates: 1 for the repeated layers' tensors ([L, 1, ...] on the stacked
    axis), 0 elsewhere (embeddings, norms, head and the original layers stay as loaded)."""
    if source.train == "all":
        return None
    new = np.asarray(upscale_lib.repeated_layers(source.slices), np.float32)
    mask = {}
    for path, shape in hf.param_shapes(source.config).items():
        mask[path] = new.reshape((-1,) + (1,) * (len(shape) - 1)) if path.startswith("layers/") else np.float32(0)
    return model_lib.unflatten_params(mask)


@dataclasses.dataclass
class StateLayout:
    """Shapes and shardings of the train state of one run config and model on one mesh."""

    optimizer: optax.GradientTransformation
    flat_param_shardings: dict[str, Any]  # "layers/attn/q" -> NamedSharding
    param_shardings: dict  # the same, as the nested param tree
    state_shardings: dict  # step, params, opt_state, rng
    abstract: dict  # ShapeDtypeStructs with shardings: what a restore fills


def state_layout(c, config: ModelConfig, mesh) -> StateLayout:
    """Traces shapes only (jax.eval_shape): nothing is allocated."""
    shapes = hf.param_shapes(config)
    flat_sh = sharding.param_shardings(shapes, mesh)
    param_sh = model_lib.unflatten_params(flat_sh)
    abstract_params = model_lib.unflatten_params(
        {p: jax.ShapeDtypeStruct(s, jnp.float32, sharding=flat_sh[p]) for p, s in shapes.items()})
    tx = make_optimizer(c, abstract_params)
    replicated = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    # tree_map_params runs tx.init eagerly on placeholders: off any current mesh, since an
    # eager op under an AOT topology mesh (plan --compile) would be sent to absent TPUs.
    with jax.set_mesh(None):
        opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                       transform_non_params=lambda _: replicated)
    state_sh = dict(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
    abstract = dict(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=abstract_params,
                    opt_state=abstract_like(abstract_opt, opt_sh),
                    rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
    return StateLayout(tx, flat_sh, param_sh, state_sh, abstract)


def initial_params(source: ModelSource, shardings: dict[str, Any], seed: int) -> dict:
    """Weights from the HF dir (or random for a preset), up-scaled if asked, on the mesh."""
    if source.model_dir is None:
        def init():
            return model_lib.param_dict(model_lib.Transformer(source.base_config, rngs=nnx.Rngs(seed)))

        # Without up-scaling, the random params are created already sharded.
        out_sh = None if source.slices else model_lib.unflatten_params(shardings)
        params = jax.jit(init, out_shardings=out_sh)()
    else:
        params = hf.load_hf_params(source.model_dir, source.base_config,
                                   shardings=None if source.slices else shardings)
    if source.slices:
        params, _ = upscale_lib.passthrough_params([params], [source.base_config], source.slices, source.init)
    flat = model_lib.flat_params(params)
    if jax.process_count() > 1:
        # Arrays on one local device cannot move onto other hosts' devices; the same host
        # values on every process can (a tensor at a time).
        return model_lib.unflatten_params({p: jax.device_put(np.asarray(v), shardings[p]) for p, v in flat.items()})
    return model_lib.unflatten_params({p: jax.device_put(v, shardings[p]) for p, v in flat.items()})


def initial_state(layout: StateLayout, params: dict, seed: int, mesh) -> dict:
    """Step 0: the optimizer state made under jit straight into its shardings."""
    replicated = sharding.replicated(mesh)
    opt_state = jax.jit(layout.optimizer.init, out_shardings=layout.state_shardings["opt_state"])(params)
    return dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params, opt_state=opt_state,
                rng=jax.device_put(jax.random.PRNGKey(seed), replicated))
