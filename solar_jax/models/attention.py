"""Attention kernels, chosen by config (attention_impl):

  xla     the plain path (jax.nn.dot_product_attention, implementation="xla"): any device;
          materialises the [B, N, T, T] probabilities
  cudnn   cuDNN's fused attention on NVIDIA GPUs (implementation="cudnn")
  splash  TPU splash attention (Pallas, flash-style: no T x T buffer); causal and sliding
          window masks as block-sparse masks, packed documents as segment ids. On other
          platforms the same kernel runs in Pallas interpret mode (slow; for tests)
  auto    splash on TPU, cudnn on GPU (in bfloat16 or float16; xla in float32, which cuDNN's
          fused attention does not take), xla elsewhere

Every path computes softmax(q k^T / sqrt(H) + mask) v with the mask: same segment, causal,
and inside the sliding window if the model has one.
"""

from __future__ import annotations

import jax

from solar_jax.errors import SolarError
from solar_jax.models.placement import Placement, per_device_specs

IMPLS = ("auto", "xla", "cudnn", "splash")
FLASH_IMPLS = ("cudnn", "splash")  # no T x T probabilities kept (the memory planner's view)
SPLASH_BLOCKS = (512, 256, 128)


HALF_DTYPES = ("bfloat16", "float16")  # what cuDNN's fused attention computes in


def resolve(impl: str, platform: str | None = None, dtype: str | None = None) -> str:
    """'auto' -> the kernel for this platform and compute dtype; others unchanged (cudnn in
    float32 is refused: cuDNN's fused attention only takes half-precision inputs)."""
    if impl not in IMPLS:
        raise SolarError(f"unknown attention_impl {impl!r}; known: {', '.join(IMPLS)}")
    if impl == "cudnn" and dtype is not None and dtype not in HALF_DTYPES:
        raise SolarError(f"attention_impl=cudnn needs dtype bfloat16 or float16 (cuDNN's fused attention), got {dtype}")
    if impl != "auto":
        return impl
    platform = platform or jax.devices()[0].platform
    kernel = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")
    return "xla" if kernel == "cudnn" and dtype is not None and dtype not in HALF_DTYPES else kernel


def check_seq_len(impl: str, seq_len: int) -> None:
    if resolve(impl) == "splash" and seq_len % SPLASH_BLOCKS[-1]:
        raise SolarError(f"splash attention needs seq_len a multiple of {SPLASH_BLOCKS[-1]}, got {seq_len}")


def dense(q, k, v, mask, impl: str):
    """q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S] -> [B, T, N, H]. GQA without
    repeating K/V: jax groups the N query heads over the K kv heads; logits and softmax
    are float32 inside."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn" if impl == "cudnn" else "xla")


def _target_platform() -> str:
    """The platform the step is compiled for: the current mesh's devices (an AOT topology
    mesh of TPUs on a CPU host compiles the kernel with Mosaic), else the default device's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None:
        return device.platform
    return jax.devices()[0].platform


def splash(q, k, v, segment_ids, sliding_window: int | None, placement: Placement | None = None):
    """q [B, T, N, H], k/v [B, T, K, H], segment_ids [B, T] -> [B, T, N, H]. Under a mesh,
    per device on its batch rows (and heads) as placement says."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q.shape
    block = next((s for s in SPLASH_BLOCKS if t % s == 0), None)
    if block is None:
        raise SolarError(f"splash attention needs seq_len a multiple of {SPLASH_BLOCKS[-1]}, got {t}")

    def kernel_for(heads: int):
        if sliding_window is None:
            head_mask = sm.CausalMask((t, t))
        else:  # key j visible from query i iff i - W < j <= i
            head_mask = sm.LocalMask((t, t), (sliding_window - 1, 0), offset=0)
        sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
        return sk.make_splash_mha(sm.MultiHeadMask([head_mask] * heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=_target_platform() != "tpu")

    def local(q, k, v, segment_ids):
        # [B, T, N, H] -> [B, N, T, H]; the kernel takes q already scaled.
        kernel = kernel_for(q.shape[2])
        qt = (q * (h ** -0.5)).transpose(0, 2, 1, 3)
        out = jax.vmap(kernel)(qt, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                               segment_ids=sk.SegmentIds(segment_ids, segment_ids))
        return out.transpose(0, 2, 1, 3).astype(q.dtype)

    specs = per_device_specs(placement, b)
    if specs is None:
        return local(q, k, v, segment_ids)
    # A Pallas kernel is not partitioned by XLA: run it per device on its batch rows (and
    # its heads, when tensor parallelism splits them evenly).
    qkv, segments = specs
    return jax.shard_map(local, in_specs=(qkv, qkv, qkv, segments), out_specs=qkv,
                         check_vma=False)(q, k, v, segment_ids)
