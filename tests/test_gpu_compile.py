"""plan --compile for GPU hosts: the real train step compiled by XLA's GPU compiler for H100s,
on this CPU machine (jax's CUDA plugin, the gpu-compile extra; launch/setup.sh installs it).

A few layers with real head dims keep each compile to seconds; the 10.7B compiles live in
docs/results (the commands are there).
"""

import pytest

from conftest import run_command
from solar_jax.errors import SolarError
from solar_jax.hardware import chips, gpu
from solar_jax.models import attention
from solar_jax.planning import compiled as compiled_plan, hlo_stats
from solar_jax.training import memory as plan
from solar_jax.training.run_config import validate
from test_tpu_compile import SMALL, _config

needs_plugin = pytest.mark.skipif(not gpu.cuda_plugin_installed(),
                                  reason="jax's CUDA plugin is not installed: pip install -e '.[gpu-compile]'")


def _moved(p) -> dict[str, int]:
    return {k: p.collectives[k].bytes if k in p.collectives else 0 for k in hlo_stats.COLLECTIVES}


@needs_plugin
def test_fsdp_step_compiles_for_8_h100s_with_cudnn_attention_gathers_weights_and_fits():
    c = _config(batch_size=16, seq_len=2048)
    p = compiled_plan.compile_plan(c, SMALL, "h100", 8)
    assert p.topology == "1x1x8" and p.mesh == (1, 8, 1) and p.kernel == "cudnn" and p.platform == "gpu"
    # cuDNN's fused attention, forward and backward, once per layer each at least
    assert p.cudnn_calls >= 2 * SMALL.num_layers and p.kernel_flops > 0
    assert p.memory["temporaries"] > 0 and p.memory["arguments"] > 0 and p.fits
    assert p.capacity == int(chips.CHIPS["h100"].memory_bytes * gpu.memory_fraction())
    # FSDP on one host: each layer's weights all-gathered in bf16 (forward and backward), their
    # gradients reduce-scattered; nothing crosses a host.
    counts = SMALL.param_counts()
    layer_bytes = 2 * (counts["layers.attn"] + counts["layers.mlp"])
    moved = _moved(p)
    assert moved["all-gather"] >= 2 * layer_bytes and moved["reduce-scatter"] >= layer_bytes, moved
    # and no whole float32 weight gathered outside the layer loop (the gradient norm's flatten
    # did that on GPU: +2 x layer_bytes here, ~40 GiB per GPU at 10.7B)
    assert moved["all-gather"] < 2.3 * layer_bytes, moved
    assert sum(col.cross_host_wire_bytes for col in p.collectives.values()) == 0
    # every matmul counted: the HLO's (Triton/cuBLAS GEMMs) plus cuDNN's attention = the analytic count
    assert p.flops_per_chip == pytest.approx(sum(p.analytic.values()) / 8, rel=0.02)
    e = p.estimate()
    assert e["compute_seconds"] == pytest.approx(p.flops_per_chip / chips.CHIPS["h100"].peak_flops
                                                 / compiled_plan.GPU_EFFICIENCY)
    assert "ESTIMATE" in p.report() and "cuDNN attention calls" in p.report()


@needs_plugin
def test_two_hosts_shard_within_a_host_and_reduce_gradients_across_hosts():
    c = _config(batch_size=16, seq_len=2048)
    c.mesh.data = 2
    p = compiled_plan.compile_plan(c, SMALL, "h100", 16)
    assert p.topology == "1x2x8" and p.mesh == (2, 8, 1)
    # fsdp's gathers stay on NVLink; the data axis' gradient all-reduce goes between the hosts
    assert p.collectives["all-gather"].cross_host_wire_bytes == 0
    across = p.collectives["all-reduce"].cross_host_wire_bytes
    counts = SMALL.param_counts()
    assert across >= 2 * (counts["layers.attn"] + counts["layers.mlp"]) / 8 * 0.5, across
    e = p.estimate()
    assert e["network_seconds"] > 0 and e["comm_seconds"] == pytest.approx(e["nvlink_seconds"] + e["network_seconds"])


@needs_plugin
def test_a_newer_spec_file_compiles_with_its_unknown_fields_dropped(tmp_path):
    # openxla/xla's specs carry fields newer than this jaxlib's XLA (collective_memory_granularity)
    text = gpu.target_config(chips.GPUS["h100"]).replace(
        "  thread_dim_limit_z: 64\n", "  thread_dim_limit_z: 64\n  collective_memory_granularity: 2097152\n"
                                      "  future_block {\n    links: 18\n  }\n")
    dropped = []
    devices = gpu.topology_devices("h100", 8, text, dropped)
    assert len(devices) == 8 and devices[0].device_kind == "NVIDIA H100 80GB HBM3"
    assert dropped == ["collective_memory_granularity", "future_block"]


def test_bad_gpu_inputs_are_one_clear_error_before_any_compile():
    # cuDNN's fused attention takes bf16/fp16 only: auto falls back to XLA's in float32, and an
    # explicit cudnn in float32 is refused before any tracing
    assert attention.resolve("auto", "gpu", "bfloat16") == "cudnn"
    assert attention.resolve("auto", "gpu", "float32") == "xla"
    with pytest.raises(SolarError, match="cudnn needs dtype bfloat16"):
        attention.resolve("cudnn", "gpu", "float32")
    with pytest.raises(SolarError, match="unknown device 'h999x8'"):
        plan.parse_device("h999x8")
    assert plan.parse_device("h100x16") == ("h100", 16) and plan.parse_device("b200x8") == ("b200", 8)
    with pytest.raises(SolarError, match="multiple of 8"):
        gpu.topology_name("h100", 12)
    with pytest.raises(SolarError, match="contradicts"):
        plan.parse_device("h100x16", 8)
    c = _config()
    c.mesh.fsdp = 3
    with pytest.raises(SolarError, match="mesh"):
        validate(c, 8)
    if gpu.cuda_plugin_installed():
        with pytest.raises(SolarError, match="Expected integer"):
            gpu.topology_devices("h100", 8, "gpu_device_info { core_count: x }")
        with pytest.raises(SolarError, match="describes no GPU"):
            gpu.topology_devices("h100", 8, "platform_name: \"CUDA\"\n")


def test_replica_groups_in_every_form_xla_prints():
    g = hlo_stats.replica_groups
    assert g("replica_groups=mesh['axis_0'=8,'axis_1'=2], device_ids=([2,8]T(1,0)) {'axis_0'}, x", 16) == \
        [list(range(8)), list(range(8, 16))]
    assert g("replica_groups=mesh['axis_0'=8,'axis_1'=2], device_ids=([2,8]T(1,0)) {'axis_1'}, x", 16)[0] == [0, 8]
    assert g("replica_groups=mesh['a'=2,'b'=2] {'a'}, x", 4) == [[0, 2], [1, 3]]
    assert g("replica_groups={{0,1},{2,3}}, x", 4) == [[0, 1], [2, 3]]
    assert g("replica_groups=[2,4]<=[4,2]T(1,0), x", 8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert g("source_target_pairs={{0,1},{1,2}}, x", 3) == [[0, 1], [1, 2]]
    # the wire bytes come from the same groups: an all-reduce over the 2-host axis of a mesh
    # with device_ids moves (2 - 1) / 2 x 2 of its operand, and crosses the hosts
    hlo = """ENTRY %main (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  ROOT %r = f32[1024]{0} all-reduce(%p), channel_id=1, replica_groups=mesh['axis_0'=8,'axis_1'=2], device_ids=([2,8]T(1,0)) {'axis_1'}, to_apply=%add
}
"""
    col = hlo_stats.collectives(hlo_stats.parse(hlo), 16, hosts=[i // 8 for i in range(16)])["all-reduce"]
    assert col.bytes == 4096 and col.wire_bytes == 4096 and col.cross_host_wire_bytes == 4096


def test_one_chip_table_feeds_the_planner_the_estimates_and_mfu():
    from solar_jax.training import metrics
    from solar_jax.hardware import tpu

    assert tpu.CHIPS["tpu-v5p"] is chips.CHIPS["tpu-v5p"]
    assert plan.DEVICE_MEMORY["h100"] == chips.CHIPS["h100"].memory_bytes
    assert plan.device_capacity("h100") == int(chips.CHIPS["h100"].memory_bytes * gpu.memory_fraction())
    kinds = {"TPU v5 lite": "tpu-v5e", "TPU v5p": "tpu-v5p", "NVIDIA H100 80GB HBM3": "h100", "NVIDIA B200": "b200"}
    for kind, name in kinds.items():
        assert chips.chip_for_device_kind(kind).name == name
        assert metrics.PEAK_FLOPS[next(k for k in metrics.PEAK_FLOPS if kind.startswith(k))] == \
            chips.CHIPS[name].peak_flops
    assert all(c.source for c in chips.CHIPS.values())


@needs_plugin
def test_plan_compile_command_for_h100s_and_its_bad_spec_edge(tmp_path):
    args = ("--config=configs/cpt.py:tiny", "--config.dtype=bfloat16", "--config.seq_len=128")
    r = run_command("solar_jax.plan", *args, "--device=h100x8", "--compile", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "compiled for 1x1x8 (8 GPUs of h100" in r.stdout and "ESTIMATE (assumptions" in r.stdout, r.stdout
    bad = tmp_path / "bad.txtpb"
    bad.write_text("gpu_device_info { core_count: many }\n")
    r = run_command("solar_jax.plan", *args, "--device=h100x8", "--compile", f"--gpu_spec={bad}", timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "XLA could not describe 8 x h100" in r.stderr and "compiled for" not in r.stdout


def test_the_gradient_norm_is_the_tree_norm():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from solar_jax.training.optim import global_norm

    keys = jax.random.split(jax.random.key(0), 3)
    tree = {"a": jax.random.normal(keys[0], (3, 5, 7)), "b": [jax.random.normal(keys[1], (11,)),
                                                             jax.random.normal(keys[2], (2, 3))]}
    exact = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    assert float(global_norm(tree)) == pytest.approx(exact, rel=1e-6)
    assert float(global_norm(tree)) == pytest.approx(float(optax.tree.norm(tree)), rel=1e-5)
    assert global_norm({"x": jnp.ones((4, 4), jnp.bfloat16)}).dtype == jnp.float32
