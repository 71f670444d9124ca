"""NVIDIA GPU hosts without a GPU: their devices for ahead-of-time compiles by XLA's GPU compiler.

jax's CUDA plugin (the `gpu-compile` extra: jax[cuda12]) compiles for GPUs it is told about
with none attached ("deviceless" compilation): jax.experimental.topologies takes a text
GpuTargetConfigProto (the chip's CUDA device properties) and a topology "slices x hosts x
GPUs per host" ("1x2x8": two hosts of 8), and jit(...).lower(...).compile() against a Mesh
of those devices produces the real GPU executable (memory analysis, HLO). What it does not
do: autotune (GEMMs keep default tiles, so the binary says nothing of speed), give a cost
model (cost_analysis() is None), count cuDNN's workspaces, or refuse a step that cannot fit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import tempfile

from jax.experimental import topologies

from solar_jax.errors import SolarError
from solar_jax.hardware.chips import GPUS, Chip

# cuDNN the target claims: jax 0.10's cuDNN fused attention needs >= 9.
_CUDNN_VERSION = (9, 8)
_NAME = re.compile(r"^([a-z][a-z0-9]*)x(\d+)$")
# jax's GPU allocator takes this fraction of the GPU's memory at start (jax's own default is
# 0.75); the rest is left to what XLA does not allocate or count: cuBLAS and cuDNN workspaces,
# NCCL's buffers, the CUDA context. solar_jax's commands set it unless the user did, and the
# planners' "fits" means "fits in this share".
MEMORY_FRACTION = 0.9


def cuda_plugin_installed() -> bool:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


def _gpu_attached() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia/gpus")


def quiet_off_gpu() -> None:
    """With jax's CUDA plugin installed (the gpu-compile extra) on a host without an NVIDIA
    driver, jax's start calls cuInit, which fails (error 303), and prints a traceback on every
    command; skipping that version check keeps the start quiet (jax then uses the CPU or TPU)
    and leaves the plugin registered for deviceless compiles. Call before jax starts a backend."""
    if cuda_plugin_installed() and not _gpu_attached():
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


def apply_memory_fraction() -> None:
    """XLA_PYTHON_CLIENT_MEM_FRACTION = MEMORY_FRACTION unless set (read when jax starts a GPU)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(MEMORY_FRACTION))


def memory_fraction() -> float:
    """The share of a GPU's memory jax's allocator may use in this environment."""
    try:
        value = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", MEMORY_FRACTION))
    except ValueError:
        raise SolarError(f"XLA_PYTHON_CLIENT_MEM_FRACTION must be a number, got "
                         f"{os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']!r}") from None
    if not 0 < value <= 1:
        raise SolarError(f"XLA_PYTHON_CLIENT_MEM_FRACTION must be in (0, 1], got {value}")
    return value


def parse_name(name: str) -> tuple[str, int] | None:
    """'h100x16' -> ('h100', 16); None when the name is not of that form or names no GPU."""
    m = _NAME.match(name.lower())
    return (m.group(1), int(m.group(2))) if m and m.group(1) in GPUS else None


def topology_name(device: str, count: int) -> str:
    """('h100', 16) -> '1x2x8': one slice, hosts, GPUs per host (a host holds up to 8)."""
    chip = GPUS.get(device)
    if chip is None:
        raise SolarError(f"unknown GPU {device!r}; known: {', '.join(GPUS)}")
    per_host = chip.gpus_per_host
    if count <= 0 or (count > per_host and count % per_host):
        raise SolarError(f"{count} x {device}: a GPU count must be at most {per_host} (one host) or a multiple "
                         f"of {per_host} (whole hosts)")
    hosts = max(count // per_host, 1)
    return f"1x{hosts}x{min(count, per_host)}"


def check_can_compile(device: str, count: int) -> str:
    """The topology name, once it is known that XLA's GPU compiler is here (before any work)."""
    name = topology_name(device, count)
    if not cuda_plugin_installed():
        raise SolarError("--compile for GPUs needs XLA's GPU compiler (jax's CUDA plugin): pip install -e "
                         "'.[gpu-compile]' (it compiles for GPUs on a machine without one)")
    return name


def target_config(chip: Chip) -> str:
    """The chip's GpuTargetConfigProto as text, from its entry in the chip table."""
    t = chip.target
    if t is None:
        raise SolarError(f"{chip.name} has no GPU target description")
    major, minor = t.compute_capability
    info = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
                shared_memory_per_core=t.shared_memory_per_sm, threads_per_core_limit=2048, core_count=t.sm_count,
                fpus_per_core=t.fp32_units_per_sm, block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535,
                block_dim_limit_z=65535, memory_bandwidth=int(chip.memory_bandwidth), l2_cache_size=t.l2_bytes,
                clock_rate_ghz=t.clock_ghz, device_memory_size=chip.memory_bytes,
                shared_memory_per_block_optin=t.shared_memory_per_block_optin, registers_per_core_limit=65536,
                registers_per_block_limit=65536, thread_dim_limit_x=1024, thread_dim_limit_y=1024,
                thread_dim_limit_z=64)
    lines = ["gpu_device_info {", *(f"  {k}: {v}" for k, v in info.items()),
             f"  cuda_compute_capability {{ major: {major} minor: {minor} }}", "}", 'platform_name: "CUDA"',
             f"dnn_version_info {{ major: {_CUDNN_VERSION[0]} minor: {_CUDNN_VERSION[1]} }}",
             f'device_description_str: "{t.device_kind}"']
    return "\n".join(lines) + "\n"


def read_spec(path: str) -> str:
    """A user's GpuTargetConfigProto text file (e.g. one of openxla/xla's
    xla/backends/gpu/target_config/specs/*.txtpb, or one dumped on a real GPU)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise SolarError(f"cannot read the GPU spec {path}: {e.strerror or e}") from None


def spec_memory_bytes(text: str) -> int:
    """A GpuTargetConfigProto's device_memory_size (0 when absent)."""
    m = re.search(r"\bdevice_memory_size:\s*(\d+)", text)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def _native_stderr():
    """Captures what C++ writes to fd 2 (XLA's text-proto parser names the bad field only there)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        captured: list[str] = []
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            captured.append(f.read().decode(errors="replace"))


def _drop_field(text: str, line: int, field: str) -> str | None:
    """text without the field that starts on 1-based `line` (a scalar or a { } block)."""
    rows = text.splitlines()
    index = line - 1
    if not 0 <= index < len(rows) or field not in rows[index]:
        index = next((i for i, r in enumerate(rows) if re.match(rf"\s*{re.escape(field)}\b", r)), -1)
        if index < 0:
            return None
    end = index
    if "{" in rows[index]:
        depth = 0
        for end in range(index, len(rows)):
            depth += rows[end].count("{") - rows[end].count("}")
            if depth <= 0:
                break
    return "\n".join(rows[:index] + rows[end + 1:]) + "\n"


def topology_devices(device: str, count: int, spec_text: str | None = None,
                     dropped: list[str] | None = None) -> list:
    """The GPUs of `count` x device on hosts of 8, for ahead-of-time compiles with no GPU.
    spec_text: a GpuTargetConfigProto to use instead of the chip table's; fields this jaxlib's
    XLA does not know (newer specs carry some) are dropped and named in `dropped`."""
    name = check_can_compile(device, count)
    text = spec_text if spec_text is not None else target_config(GPUS[device])
    for _ in range(32):  # one unknown field per try: the parser stops at the first
        with _native_stderr() as err:
            try:
                devices = list(topologies.get_topology_desc(platform="cuda", target_config=text, topology=name).devices)
            except Exception as e:  # XLA's own words, in one line
                failure = str(e).splitlines()[0] if str(e) else type(e).__name__
            else:
                if spec_memory_bytes(text) <= 0 or not devices[0].device_kind:
                    raise SolarError("the GPU spec describes no GPU: it needs gpu_device_info with "
                                     "device_memory_size and a device_description_str")
                return devices
        unknown = re.search(r'(\d+):\d+: Message type "[\w.]+" has no field named "(\w+)"', err[0] if err else "")
        if "topology not implemented" in failure:
            raise SolarError("jax's CUDA plugin is installed but not registered: set JAX_PLATFORMS=cpu or "
                             "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before jax starts on a machine without a GPU")
        if unknown is None:
            detail = re.search(r"Error parsing text-format [\w.]+: (.*)", err[0] if err else "")
            raise SolarError(f"XLA could not describe {count} x {device} ({name}): {failure}"
                             + (f" ({detail.group(1).strip()})" if detail else ""))
        shorter = _drop_field(text, int(unknown.group(1)), unknown.group(2))
        if shorter is None:
            raise SolarError(f"the GPU spec has a field this jax's XLA does not know: {unknown.group(2)}")
        text = shorter
        if dropped is not None:
            dropped.append(unknown.group(2))
    raise SolarError("the GPU spec has more than 32 fields this jax's XLA does not know")
