"""The memory planner against the real trees and XLA's compiled memory analysis."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, run_command
from solar_jax.models import transformer as model_lib
from solar_jax.training import memory as plan
from solar_jax.training.state import state_layout
from solar_jax.training.step import make_train_step, model_options
from solar_jax.parallel import sharding
from solar_jax.models.config import ModelConfig, preset
from solar_jax.training.run_config import base_config


def _config(**kw):
    c = base_config()
    for k, v in kw.items():
        if k.startswith("mesh_"):
            c.mesh[k[5:]] = v
        else:
            c[k] = v
    return c


def _device0_bytes(tree) -> int:
    """Bytes that device 0 actually holds for a tree of (sharded) arrays."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (1, 4, 1), (1, 2, 2), (2, 2, 2)])
@pytest.mark.parametrize("name", ["tiny", "smollm2-135m"])
def test_param_and_optimizer_bytes_equal_the_real_tree(name, mesh_shape):
    config = preset(name)
    c = _config(mesh_data=mesh_shape[0], mesh_fsdp=mesh_shape[1], mesh_tensor=mesh_shape[2])
    n = int(np.prod(mesh_shape))
    mesh = sharding.make_mesh(*mesh_shape, jax.devices()[:n])
    layout = state_layout(c, config, mesh)
    tx, param_sh, state_sh, abstract = layout.optimizer, layout.param_shardings, layout.state_shardings, layout.abstract
    # Real arrays with the train step's shardings (zeros: the values do not matter).
    params = jax.jit(lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract["params"]),
                     out_shardings=param_sh)()
    opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)
    planned = plan.state_bytes(c, config, mesh_shape)
    assert planned["params"] == _device0_bytes(params)
    assert planned["optimizer"] == _device0_bytes(opt_state)


HELD_OUT = ModelConfig(vocab_size=512, hidden_size=96, intermediate_size=256, num_layers=6, num_heads=6,
                       num_kv_heads=2, head_dim=16, max_position_embeddings=1024)  # not in the fit's set


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (1, 4, 1)])
@pytest.mark.parametrize("remat", ["none", "full", "dots", "dots_no_batch"])
def test_activation_estimate_within_25_percent_of_the_compiled_step(remat, mesh_shape):
    c = _config(batch_size=8, seq_len=128, remat=remat, mesh_data=mesh_shape[0], mesh_fsdp=mesh_shape[1],
                mesh_tensor=mesh_shape[2])
    mesh = sharding.make_mesh(*mesh_shape, jax.devices()[:int(np.prod(mesh_shape))])
    graphdef, _ = nnx.split(model_lib.abstract_model(HELD_OUT, **model_options(c, mesh, HELD_OUT)))
    layout = state_layout(c, HELD_OUT, mesh)
    tx, state_sh, abstract = layout.optimizer, layout.state_shardings, layout.abstract
    batch = {k: jax.ShapeDtypeStruct((8, 128), dt, sharding=sharding.batch_sharding(mesh))
             for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
                           ("loss_mask", jnp.float32))}
    with jax.set_mesh(mesh):
        compiled = jax.jit(make_train_step(graphdef, tx, 1), donate_argnums=0,
                           in_shardings=(state_sh, {k: v.sharding for k, v in batch.items()}),
                           out_shardings=(state_sh, sharding.replicated(mesh))).lower(abstract, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    p = plan.plan(c, HELD_OUT, "cpu", int(np.prod(mesh_shape)))
    estimate = p.per_device["activations"] + p.per_device["gradients"]  # what XLA counts as temporaries
    assert abs(estimate / temp - 1) < 0.25, (estimate, temp)


def test_device_names():
    assert plan.parse_device("v5p-128") == ("tpu-v5p", 64)
    assert plan.parse_device("v6e-256") == ("tpu-v6e", 256)
    assert plan.parse_device("h100", 16) == ("h100", 16)
    with pytest.raises(Exception, match="unknown device"):
        plan.parse_device("v9-8")


@pytest.mark.parametrize("kind,name", [("TPU v4", "tpu-v4"), ("TPU v5 lite", "tpu-v5e"), ("TPU v5p", "tpu-v5p"),
                                       ("TPU v6 lite", "tpu-v6e"), ("NVIDIA H100 80GB HBM3", "h100")])
def test_the_train_commands_check_names_the_local_accelerator(monkeypatch, kind, name):
    # jax's device kinds, as the pre-compile check sees them on a TPU VM or a GPU host: the
    # planner must pick the generation's table (v5e and v6e report "lite").
    class Device:
        platform, device_kind = "tpu", kind

        def memory_stats(self):
            return {"bytes_limit": 16 * 2**30}

    monkeypatch.setattr(jax, "devices", lambda: [Device()])
    assert plan.local_device_name() == (name, 16 * 2**30)


def test_plan_command_says_whether_solar_fits_a_v5p_128():
    args = ["solar_jax.plan", "--config=configs/cpt.py:solar", "--config.model_preset=mistral-7b",
            "--device=v5p-128"]
    fits = run_command(*args)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    assert "64 x tpu-v5p" in fits.stdout and "fits in 95.0 GiB" in fits.stdout and "48 layers" in fits.stdout
    too_big = run_command(*args, "--config.remat=none", "--config.attention_impl=xla")
    assert too_big.returncode == 1 and "does NOT fit" in too_big.stdout
    bad = run_command("solar_jax.plan", "--config=configs/cpt.py:tiny", "--device=tpu-v9")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_train_refuses_a_config_that_cannot_fit_before_compiling(tmp_path):
    r = subprocess.run([sys.executable, "-m", "solar_jax.train", "--config=configs/cpt.py:tiny",
                        f"--config.workdir={tmp_path}", "--config.batch_size=262144", "--config.seq_len=512"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "GiB per device" in r.stderr and "grad_accum_steps" in r.stderr
    assert "compiled" not in r.stdout and not (tmp_path / "checkpoints").exists()
