"""Memory planner: per-device bytes of a training config on a mesh, and whether it fits.

  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=v5p-128
  python -m solar_jax.plan --config=configs/cpt.py --device=h100 --num_devices=8

Parameters and optimizer state are exact: the real optimizer's state tree (jax.eval_shape,
nothing allocated) with each leaf divided by the mesh axes its parameter is split over
(sharding.spec_for, the rules the train step uses). Gradients are float32 like the params
(a second copy when accumulating microbatches). Activations are an estimate per remat
policy, from the tensors the backward pass keeps per layer, with coefficients fitted to
XLA's compiled memory analysis (`python -m solar_jax.bench --config=configs/bench.py:plan` prints estimate vs
compiled). The train command runs the same check before compiling.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from solar_jax.errors import SolarError
from solar_jax.hardware import gpu
from solar_jax.hardware.chips import CHIPS
from solar_jax.models.config import ModelConfig
from solar_jax.models import attention
from solar_jax.models import transformer as model_lib
from solar_jax.parallel import sharding
from solar_jax.training.optim import make_optimizer
from solar_jax.parallel.sharding import spec_for
from solar_jax.weights import hf

GiB = 2**30

# Memory per device (bytes), from the chip table.
DEVICE_MEMORY = {name: chip.memory_bytes for name, chip in CHIPS.items()}
# Slice names: v4-N and v5p-N count TensorCores (2 per chip); v5litepod-N / v6e-N count chips.
_SLICE = re.compile(r"^(v4|v5p|v5e|v5litepod|v6e)-(\d+)$")
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v5litepod": 1, "v6e": 1}
_SLICE_DEVICE = {"v4": "tpu-v4", "v5p": "tpu-v5p", "v5e": "tpu-v5e", "v5litepod": "tpu-v5e", "v6e": "tpu-v6e"}

# The train step's temporary bytes per device (activations kept for the backward pass,
# gradients, XLA's working buffers), per remat policy: a linear model in the terms below with
# coefficients fitted (non-negative least squares) to `compile().memory_analysis()` temp
# sizes of 97 float32 train steps on CPU with the XLA flags the commands set: 4 model shapes
# (L 2-8, D 64-256, F/D 2-5.5, V 256-4096), batches 4-8 x 64-256, meshes of 1 device, fsdp=4
# and data=2 x fsdp=2. Largest error there: 12% (none), 16% (dots), 19% (dots_no_batch), 40%
# (full, on steps under 6 MiB where fixed buffers dominate). Fitted on CPU: XLA on TPU/GPU
# fuses and schedules differently, so leave headroom there.
# `python -m solar_jax.bench --config=configs/bench.py:plan` re-measures. Terms (t: tokens of one microbatch on a
# device; a: compute dtype bytes; Q = (N + 2K) * head_dim; S = rows * N * T^2):
#   d: L t D a     f: L t F a     q: L t Q a     s: L S 4 (attention probabilities)
#   s1: S 4 (one layer's)     v: t V 4 (float32 logits)     g: parameter bytes (gradients)
#   one: t (7D + 4F + 2Q) a (one layer's full set, recomputed or in flight)
#   layer: one layer's float32 weights, gathered when sharded     embed: V D 4, gathered
#   c0: MiB of fixed buffers
ACTIVATION_COEFFICIENTS: dict[str, dict[str, float]] = {
    'none': {'d': 0.0, 'f': 7.296, 'q': 0.0, 's': 1.935, 's1': 1.275, 'v': 1.917, 'g': 1.413, 'one': 0.965, 'layer': 1.042, 'embed': 0.516, 'c0': 0.0},
    'full': {'d': 1.0, 'f': 0.0, 'q': 0.0, 's': 0.0, 's1': 1.673, 'v': 1.339, 'g': 1.4, 'one': 0.982, 'layer': 0.875, 'embed': 0.407, 'c0': 0.349},
    'dots': {'d': 0.0, 'f': 3.17, 'q': 0.0, 's': 0.543, 's1': 3.191, 'v': 1.7, 'g': 1.496, 'one': 0.556, 'layer': 1.025, 'embed': 0.465, 'c0': 0.0},
    'dots_no_batch': {'d': 0.0, 'f': 2.236, 'q': 0.0, 's': 0.0, 's1': 3.813, 'v': 1.251, 'g': 1.642, 'one': 0.588, 'layer': 0.875, 'embed': 0.375, 'c0': 0.221},
}


# The same model fitted to libtpu's compiled memory (plan --compile's path: bf16 compute,
# splash attention, the commands' libtpu flags) on 2026-12-04, as the total against the
# compiled peak per chip (arguments + temporaries + outputs - aliased + code): the 32 steps of
# `python -m solar_jax.bench --config=configs/bench.py:plan_tpu --config.fit=True` (a 3-layer
# d1024 model with head_dim 128, vocab 4k and 32k, 4-8 rows of 2048-4096 per chip, each
# remat policy, on v5p-8 and v5litepod-4) and 19 SOLAR 10.7B steps on v4-128, v5p-128,
# v5e-256 and v6e-256 (plan_tpu.BIG_STEPS), by bounded least squares on the relative error,
# with the terms each policy must keep as lower bounds (full: the layer inputs d >= 1; dots
# and dots_no_batch: the projections' outputs d >= 2, f >= 2, q >= 1; none: those and the
# MLP's elementwise outputs, f >= 3; all: gradients g >= 1) and c0 (code, fixed buffers) at
# most 64 MiB. Errors there: small steps -7.7% to +6.2%, 10.7B steps -12.7% to +11.6%; held
# out (DPO 8 pairs x 2048, 2 microbatches of 32 x 4096) -7.2% to +5.1%. Steps under ~1 GiB
# per chip are off by -15% to +70%: libtpu keeps their buffers in on-chip memory, differently
# by generation. No T x T probabilities with splash (s, s1: the CPU table's, for
# attention_impl=xla).
TPU_ACTIVATION_COEFFICIENTS: dict[str, dict[str, float]] = {
    "none": {"d": 3.017, "f": 3.872, "q": 1.182, "v": 1.394, "g": 2.008, "one": 2.611, "layer": 1.790,
             "embed": 4.564, "c0": 0.069},
    "full": {"d": 1.000, "f": 0.000, "q": 0.000, "v": 0.640, "g": 2.829, "one": 0.867, "layer": 0.000,
             "embed": 1.527, "c0": 64.000},
    "dots": {"d": 2.690, "f": 2.460, "q": 1.253, "v": 0.951, "g": 1.042, "one": 0.737, "layer": 0.412,
             "embed": 2.383, "c0": 0.038},
    "dots_no_batch": {"d": 2.000, "f": 2.000, "q": 1.000, "v": 1.103, "g": 1.000, "one": 1.043, "layer": 0.000,
                      "embed": 0.000, "c0": 38.541},
}
# One factor per TPU generation on the terms above (fitted with them): the same step keeps
# 12-19% more on v4, v5e and v6e than on v5p.
TPU_GENERATION_FACTOR = {"tpu-v4": 1.117, "tpu-v5e": 1.194, "tpu-v5p": 1.000, "tpu-v6e": 1.125}
# The same model fitted to XLA's GPU compiler's memory (plan --compile's path on GPU hosts:
# bf16 compute, cuDNN attention) on 2026-12-05, the same way: the 16 small steps of
# `python -m solar_jax.bench --config=configs/bench.py:plan_tpu --config.devices=h100x4
# --config.fit=True` and 17 SOLAR 10.7B steps on 8 and 16 H100s, 8 A100s and 8 B200s
# (plan_tpu.GPU_BIG_STEPS, from docs/results/gpu-2026-12-05). Errors there: -6.8% to +6.6%
# (the CPU table on the same steps: -24.7% to +22%). dots and dots_no_batch compile alike on
# GPU (cuDNN's attention leaves no batched dot to save). One factor per GPU (h100 = 1).
GPU_ACTIVATION_COEFFICIENTS: dict[str, dict[str, float]] = {
    "none": {"d": 2.926, "f": 3.731, "q": 1.183, "v": 1.302, "g": 1.000, "one": 2.478, "layer": 0.000,
             "embed": 0.000, "c0": 0.000},
    "full": {"d": 1.000, "f": 0.000, "q": 0.000, "v": 1.137, "g": 1.041, "one": 0.929, "layer": 0.000,
             "embed": 0.000, "c0": 64.000},
    "dots": {"d": 2.631, "f": 2.406, "q": 1.228, "v": 1.204, "g": 1.000, "one": 0.669, "layer": 0.000,
             "embed": 0.000, "c0": 0.000},
    "dots_no_batch": {"d": 2.000, "f": 2.000, "q": 1.000, "v": 1.204, "g": 1.009, "one": 0.968, "layer": 0.000,
                      "embed": 0.000, "c0": 0.000},
}
GPU_FACTOR = {"a100": 0.991, "b200": 0.917, "h100": 1.000, "h200": 1.000}  # h200: not fitted, as h100
for _policy in ACTIVATION_COEFFICIENTS:  # no T x T probabilities with splash or cuDNN: the
    for _table in (TPU_ACTIVATION_COEFFICIENTS, GPU_ACTIVATION_COEFFICIENTS):  # CPU table's, for xla
        _table[_policy].update(s=ACTIVATION_COEFFICIENTS[_policy]["s"], s1=ACTIVATION_COEFFICIENTS[_policy]["s1"])


@dataclasses.dataclass
class Plan:
    device: str
    num_devices: int
    mesh: tuple[int, int, int]  # data, fsdp, tensor
    per_device: dict[str, int]  # params, optimizer, gradients, activations
    capacity: int | None  # bytes per device, None when unknown

    @property
    def total(self) -> int:
        return sum(self.per_device.values())

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= self.capacity

    def report(self) -> str:
        lines = [f"memory plan: {self.num_devices} x {self.device}, mesh data={self.mesh[0]} fsdp={self.mesh[1]} "
                 f"tensor={self.mesh[2]}, per device:"]
        for k, v in self.per_device.items():
            lines.append(f"  {k:12s} {v / GiB:9.2f} GiB")
        lines.append(f"  {'total':12s} {self.total / GiB:9.2f} GiB")
        if self.capacity is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  {verdict} in {self.capacity / GiB:.1f} GiB per device "
                         f"({self.total / self.capacity:.0%} used)")
        return "\n".join(lines)


class _MeshShape:
    """What sharding.spec_for reads from a mesh: the axis sizes (no devices needed)."""

    def __init__(self, *sizes: int):
        self.shape = dict(zip(sharding.MESH_AXES, sizes, strict=True))


def parse_device(name: str, num_devices: int = 0) -> tuple[str, int]:
    """'v5p-128' -> ('tpu-v5p', 64 chips); 'h100x16' -> ('h100', 16); 'h100' with num_devices
    -> ('h100', n); 'cpu'."""
    name = name.lower()
    named = gpu.parse_name(name)
    if named:
        if num_devices and num_devices != named[1]:
            raise SolarError(f"--num_devices={num_devices} contradicts {name} ({named[1]} GPUs)")
        return named
    m = _SLICE.match(name)
    if m:
        gen, cores = m.group(1), int(m.group(2))
        chips = max(cores // _CORES_PER_CHIP[gen], 1)
        if num_devices and num_devices != chips:
            raise SolarError(f"--num_devices={num_devices} contradicts {name} ({chips} chips)")
        return _SLICE_DEVICE[gen], chips
    if name in DEVICE_MEMORY or name == "cpu":
        return name, num_devices or 1
    known = ", ".join([*DEVICE_MEMORY, "cpu", "GPUs like h100x16", "or a TPU slice like v5p-128"])
    raise SolarError(f"unknown device {name!r}; known: {known}")


def device_capacity(device: str, num_local_devices: int = 1) -> int:
    if device == "cpu":  # host RAM shared by the local (fake) devices
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(num_local_devices, 1)
    if CHIPS[device].platform == "gpu":  # jax's allocator's share (hardware/gpu.py)
        return int(DEVICE_MEMORY[device] * gpu.memory_fraction())
    return DEVICE_MEMORY[device]


def _shard_factor(spec, mesh: _MeshShape) -> int:
    factor = 1
    for part in spec:
        for axis in (part,) if isinstance(part, str) else (part or ()):
            factor *= mesh.shape[axis]
    return factor


def state_bytes(c, config: ModelConfig, mesh_shape: tuple[int, int, int]) -> dict[str, int]:
    """Exact per-device bytes of the float32 params and the optimizer state."""
    import jax
    import jax.numpy as jnp
    import optax


    mesh = _MeshShape(*mesh_shape)
    shapes = hf.param_shapes(config)
    factors = {p: _shard_factor(spec_for(model_lib.PARAM_AXES[p], s, mesh), mesh) for p, s in shapes.items()}
    params = model_lib.unflatten_params({p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in shapes.items()})
    tx = make_optimizer(c, params)
    opt = jax.eval_shape(tx.init, params)
    opt_bytes = optax.tree_map_params(
        tx, lambda leaf, f: leaf.size * leaf.dtype.itemsize // f, opt, model_lib.unflatten_params(factors),
        transform_non_params=lambda leaf: leaf.size * leaf.dtype.itemsize)
    param_bytes = sum(4 * math.prod(s) // factors[p] for p, s in shapes.items())
    return dict(params=param_bytes, optimizer=int(sum(jax.tree.leaves(opt_bytes))))


def activation_terms(c, config: ModelConfig, mesh_shape: tuple[int, int, int], grad_bytes: int,
                     flash: bool = False) -> dict[str, float]:
    """The terms of the activation model (see ACTIVATION_COEFFICIENTS), in bytes per device."""
    data, fsdp, tensor = mesh_shape
    rows = max(c.batch_size // c.grad_accum_steps // (data * fsdp), 1)
    rows *= 2 if c.task == "dpo" else 1  # chosen and rejected
    t = rows * c.seq_len
    a = 2 if c.dtype == "bfloat16" else 4
    split = lambda n: n // tensor if n % tensor == 0 else n  # noqa: E731 (as spec_for)
    d, f, v, h = config.hidden_size, split(config.intermediate_size), split(config.vocab_size), config.head_dim
    heads = split(config.num_heads)
    q = (heads + 2 * split(config.num_kv_heads)) * h
    scores = rows * heads * c.seq_len ** 2
    layers = config.num_layers
    sharded = fsdp * tensor > 1
    layer_weights = 4 * (2 * config.num_heads * h * d + 2 * config.num_kv_heads * h * d
                         + 3 * d * config.intermediate_size)
    terms = dict(d=layers * t * d * a, f=layers * t * f * a, q=layers * t * q * a, s=layers * scores * 4,
                 s1=scores * 4, v=t * v * 4, g=grad_bytes, one=t * (7 * d + 4 * f + 2 * q) * a,
                 layer=layer_weights if sharded else 0, embed=config.vocab_size * d * 4 if sharded else 0,
                 c0=2**20)
    if flash:  # fused kernels keep no [T, T] probabilities
        terms["s"] = terms["s1"] = 0
    return terms


def activation_bytes(c, config: ModelConfig, mesh_shape: tuple[int, int, int], grad_bytes: int,
                     flash: bool = False, device: str = "cpu") -> int:
    """Estimated temporary bytes of the train step per device, gradients included (see
    ACTIVATION_COEFFICIENTS; on a TPU, TPU_ACTIVATION_COEFFICIENTS times the generation's
    factor; on a GPU, GPU_ACTIVATION_COEFFICIENTS times the GPU's)."""
    if device in TPU_GENERATION_FACTOR:
        k, factor = TPU_ACTIVATION_COEFFICIENTS[c.remat], TPU_GENERATION_FACTOR[device]
    elif device in GPU_FACTOR:
        k, factor = GPU_ACTIVATION_COEFFICIENTS[c.remat], GPU_FACTOR[device]
    else:
        k, factor = ACTIVATION_COEFFICIENTS[c.remat], 1.0
    return int(factor * sum(k[name] * value for name, value in activation_terms(c, config, mesh_shape, grad_bytes,
                                                                                 flash).items()))


def plan(c, config: ModelConfig, device: str = "cpu", num_devices: int = 1, num_local_devices: int | None = None,
         capacity: int | None = None) -> Plan:

    mesh_shape = sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, num_devices)
    per = state_bytes(c, config, mesh_shape)
    grads = per["params"] * (2 if c.grad_accum_steps > 1 else 1)
    per["gradients"] = grads

    platform = "tpu" if device.startswith("tpu") else "cpu" if device == "cpu" else "gpu"
    flash = attention.resolve(c.attention_impl, platform, c.dtype) in attention.FLASH_IMPLS
    per["activations"] = max(activation_bytes(c, config, mesh_shape, grads, flash, device) - grads, 0)
    if c.task == "dpo" and c.dpo.reference == "frozen":
        per["reference"] = per["params"]  # the frozen copy of the initial params
    if capacity is None:
        capacity = device_capacity(device, num_local_devices or num_devices)
    return Plan(device, num_devices, mesh_shape, per, capacity)


def local_device_name() -> tuple[str, int | None]:
    """The planner's device name for jax.devices()[0], and its memory limit when jax reports it."""
    import jax

    dev = jax.devices()[0]
    stats = {}
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # CPU backends raise or return None
        pass
    kind = dev.device_kind.lower()
    if dev.platform == "cpu":
        return "cpu", stats.get("bytes_limit")
    # jax's TPU kinds: "TPU v4", "TPU v5 lite" (v5e), "TPU v5p", "TPU v6 lite" (v6e); GPUs
    # name their model ("NVIDIA H100 80GB HBM3").
    kind = kind.replace("v5 lite", "v5e").replace("v6 lite", "v6e")
    name = next((n for n in DEVICE_MEMORY if n.split("-")[-1] in kind), kind)
    return name, stats.get("bytes_limit")
