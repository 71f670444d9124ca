"""One table of accelerator chips, TPU and GPU: the figures every planner, report and MFU reads.

Each entry says where its figures come from. Three uses read it: the memory planner
(training/memory.py: memory per device), plan --compile's step estimate (planning/compiled.py:
peak FLOP/s, interconnect bandwidth) and the MFU a run reports (training/metrics.py: peak FLOP/s
by jax's device_kind). GPU entries also carry what XLA's GPU compiler needs to compile for the
chip with none attached (hardware/gpu.py renders it as a GpuTargetConfigProto).
"""

from __future__ import annotations

import dataclasses

GB = 1e9
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """The CUDA device properties XLA's GPU compiler reads (cudaGetDeviceProperties' fields,
    as deviceQuery prints them on the chip)."""

    compute_capability: tuple[int, int]
    sm_count: int
    fp32_units_per_sm: int
    clock_ghz: float  # SM boost clock
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    device_kind: str  # CUDA's device name, which jax reports as device_kind


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the planner's device name: tpu-v5p, h100
    platform: str  # tpu | gpu
    peak_flops: float  # dense bf16 FLOP/s
    memory_bytes: int  # HBM per chip (GPUs: what CUDA reports as total device memory)
    memory_bandwidth: float  # bytes/s
    link_bandwidth: float  # bytes/s bidirectional, all links of one chip: ICI on TPU, NVLink on GPU
    device_kinds: tuple[str, ...]  # prefixes of jax's device_kind for this chip
    source: str
    # TPU slices
    topology_prefix: str = ""  # as jax.experimental.topologies names it: v5p:4x4x4
    dims: int = 0  # torus dimensions of a slice (3 for v4/v5p, 2 for v5e/v6e)
    # GPU hosts
    network_bandwidth: float = 0.0  # bytes/s per GPU per direction between hosts (its NIC)
    gpus_per_host: int = 0
    target: GpuTarget | None = None


_CLOUD_TPU = "Cloud TPU system architecture pages (docs.cloud.google.com/tpu/docs/{})"
CHIPS: dict[str, Chip] = {c.name: c for c in (
    # v4: ICI 2400 Gbps per direction (the same relation of the Gbps figure to the
    # bidirectional GB/s one as on the v5e and v5p pages gives 600 GB/s).
    Chip("tpu-v4", "tpu", 275e12, 32 * GiB, 1200 * GB, 600 * GB, ("TPU v4",), _CLOUD_TPU.format("v4"),
         topology_prefix="v4", dims=3),
    Chip("tpu-v5e", "tpu", 197e12, 16 * GiB, 819 * GB, 400 * GB, ("TPU v5 lite", "TPU v5e"), _CLOUD_TPU.format("v5e"),
         topology_prefix="v5e", dims=2),
    Chip("tpu-v5p", "tpu", 459e12, 95 * GiB, 2765 * GB, 1200 * GB, ("TPU v5p", "TPU v5"),
         _CLOUD_TPU.format("v5p-training"), topology_prefix="v5p", dims=3),
    Chip("tpu-v6e", "tpu", 918e12, 32 * GiB, 1638 * GB, 800 * GB, ("TPU v6 lite", "TPU v6e"), _CLOUD_TPU.format("v6e"),
         topology_prefix="v6e", dims=2),
    # GPUs as HGX/DGX boards: 8 per host on NVLink (18 links on Hopper and Blackwell, 12 on
    # Ampere), one InfiniBand NIC per GPU between hosts (ConnectX-7 400 Gb/s on DGX H100, H200
    # and B200; ConnectX-6 200 Gb/s on DGX A100). Memory: CUDA's total device memory on the
    # chip (less than the marketing GB: ECC and the driver's reserve).
    Chip("h100", "gpu", 989e12, 84_942_979_072, 3350 * GB, 900 * GB, ("NVIDIA H100",),
         "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TFLOP/s dense bf16, 3.35 TB/s, NVLink 900 GB/s); "
         "DGX H100 user guide (8 x ConnectX-7 400 Gb/s)", network_bandwidth=50 * GB, gpus_per_host=8,
         target=GpuTarget((9, 0), 132, 128, 1.98, 50 * 2**20, 233_472, 232_448, "NVIDIA H100 80GB HBM3")),
    Chip("h200", "gpu", 989e12, 151_397_597_184, 4800 * GB, 900 * GB, ("NVIDIA H200", "NVIDIA GH200"),
         "NVIDIA H200 Tensor Core GPU datasheet (SXM: 989 TFLOP/s dense bf16, 141 GB, 4.8 TB/s, NVLink 900 GB/s); "
         "DGX H200 (8 x ConnectX-7 400 Gb/s)", network_bandwidth=50 * GB, gpus_per_host=8,
         target=GpuTarget((9, 0), 132, 128, 1.98, 50 * 2**20, 233_472, 232_448, "NVIDIA H200 141GB HBM3e")),
    Chip("a100", "gpu", 312e12, 85_100_068_864, 2039 * GB, 600 * GB, ("NVIDIA A100",),
         "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80 GB: 312 TFLOP/s dense bf16, 2.04 TB/s, NVLink 600 GB/s); "
         "DGX A100 user guide (8 x ConnectX-6 200 Gb/s)", network_bandwidth=25 * GB, gpus_per_host=8,
         target=GpuTarget((8, 0), 108, 64, 1.41, 40 * 2**20, 167_936, 166_912, "NVIDIA A100-SXM4-80GB")),
    Chip("b200", "gpu", 2250e12, 191_514_411_008, 8000 * GB, 1800 * GB, ("NVIDIA B200",),
         "NVIDIA DGX B200 datasheet (per GPU: 2.25 PFLOP/s dense bf16 = 72 PFLOP/s sparse FP8 / 8 / 4, "
         "8 TB/s, NVLink 5 1.8 TB/s, 8 x ConnectX-7 400 Gb/s)", network_bandwidth=50 * GB, gpus_per_host=8,
         target=GpuTarget((10, 0), 148, 128, 1.965, 126 * 2**20, 233_472, 232_448, "NVIDIA B200")),
)}

TPUS = {n: c for n, c in CHIPS.items() if c.platform == "tpu"}
GPUS = {n: c for n, c in CHIPS.items() if c.platform == "gpu"}


def chip_for_device_kind(kind: str) -> Chip | None:
    """jax's device_kind ("TPU v5 lite", "NVIDIA H100 80GB HBM3") -> its chip, the longest
    matching prefix first (so "TPU v5 lite" is v5e, not v5p's "TPU v5")."""
    matches = [(len(p), c) for c in CHIPS.values() for p in c.device_kinds if kind.startswith(p)]
    return max(matches, key=lambda m: m[0])[1] if matches else None
