"""The memory planner's estimate against XLA's compiled memory
analysis of the real train step, on fake CPU devices (1 device and fsdp=4), per remat policy.

Prints estimate / compiled for the temporaries (activations + gradients); the coefficients in
solar_jax/training/memory.py were fitted to such measurements (with the XLA flags the commands set).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig, preset
from solar_jax.training import memory as plan
from solar_jax.parallel import sharding
from solar_jax.training.run_config import base_config
from solar_jax.training.state import state_layout
from solar_jax.training.step import make_train_step, model_options


def measure(config, c, mesh_shape) -> int:
    mesh = sharding.make_mesh(*mesh_shape, jax.devices()[:mesh_shape[0] * mesh_shape[1] * mesh_shape[2]])
    graphdef, _ = nnx.split(model_lib.abstract_model(config, **model_options(c, mesh, config)))
    layout = state_layout(c, config, mesh)
    tx, state_sh, abstract = layout.optimizer, layout.state_shardings, layout.abstract
    batch = {k: jax.ShapeDtypeStruct((c.batch_size, c.seq_len), dt, sharding=sharding.batch_sharding(mesh))
             for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
                           ("loss_mask", jnp.float32))}
    with jax.set_mesh(mesh):
        compiled = jax.jit(make_train_step(graphdef, tx, c.grad_accum_steps), donate_argnums=0,
                           in_shardings=(state_sh, {k: v.sharding for k, v in batch.items()}),
                           out_shardings=(state_sh, sharding.replicated(mesh))).lower(abstract, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(c: ml_collections.ConfigDict) -> None:
    # Fake CPU devices for the fsdp=4 meshes: read when the backend starts, which is below.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    if len(jax.devices()) < 4:
        raise SolarError("the plan benchmark needs 4 devices and the jax backend started with fewer")
    models = {"tiny": preset("tiny"),
              "held-out": ModelConfig(vocab_size=512, hidden_size=96, intermediate_size=256, num_layers=6,
                                      num_heads=6, num_kv_heads=2, head_dim=16, max_position_embeddings=1024),
              "smollm2-135m x 4 layers": ModelConfig(**{**preset("smollm2-135m").__dict__, "num_layers": 4})}
    print(f"{'model':24s} {'batch':>9s} {'mesh':>7s} {'remat':>14s} {'compiled MiB':>13s} {'estimate MiB':>13s} ratio")
    worst = 0.0
    for name, config in models.items():
        for b, t in ((8, 128), (4, 256)):
            for mesh in ((1, 1, 1), (1, 4, 1)):
                for remat in ("none", "full", "dots", "dots_no_batch"):
                    run = base_config()
                    run.batch_size, run.seq_len, run.remat = b, t, remat
                    run.mesh.data, run.mesh.fsdp, run.mesh.tensor = mesh
                    compiled = measure(config, run, mesh)
                    p = plan.plan(run, config, "cpu", mesh[0] * mesh[1] * mesh[2])
                    est = p.per_device["activations"] + p.per_device["gradients"]
                    worst = max(worst, abs(est / compiled - 1))
                    print(f"{name:24s} {b:>4d}x{t:<4d} {'x'.join(map(str, mesh)):>7s} {remat:>14s} "
                          f"{compiled / 2**20:13.2f} {est / 2**20:13.2f} {est / compiled:5.2f}", flush=True)
    print(f"largest relative error: {worst:.1%}")
