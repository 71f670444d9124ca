"""TPU slices without a TPU: their chips' figures, and their devices for ahead-of-time compiles.

libtpu (jax's `tpu` extra) compiles for a named topology on any machine:
jax.experimental.topologies gives the slice's devices, and jit(...).lower(...).compile()
against a Mesh of them produces the real TPU executable (memory analysis, HLO) with no chip
attached. Nothing eager may run while such a mesh is current: eager ops are sent to its
devices, which are not there.
"""

from __future__ import annotations

import importlib.util
import os

from jax.experimental import topologies

try:  # jax's own PCI scan for TPU chips (private: a jax without it changes nothing here)
    from jax._src import hardware_utils
except ImportError:
    hardware_utils = None

from solar_jax.errors import SolarError
from solar_jax.hardware.chips import TPUS

# The TPU chips' figures (peak FLOP/s, HBM, ICI) live in the one chip table.
CHIPS = TPUS


# Chips -> the slice's torus shape, as Cloud TPU lays the common slices out.
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


# libtpu flags for every train step on TPU (the train command and plan --compile alike).
# Without them XLA on a 3D torus of 64 chips or more writes FSDP's weight all-gathers as
# all-reduces of zero-padded buffers (pytorch/xla #6528), which keeps each gathered weight
# alive from the forward to the backward pass. The async set is the one Cloud TPU's public
# training recipes (tpu-recipes) pass, but with ..._fusion_multiple_steps off (libtpu turns
# it on when the flag is not given): XLA's cost model rates the step slower with it, for the
# same collectives. ..._overlap_compute_collective_tc is the one the gathers need: without it
# they are all-reduces again. Figures: docs/results/defaults.
LIBTPU_FLAGS = (
    "--xla_enable_async_all_gather=true",
    "--xla_tpu_prefer_async_allgather_to_allreduce=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=false",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_reduce=true",
)


def apply_libtpu_flags() -> None:
    """Adds LIBTPU_FLAGS to LIBTPU_INIT_ARGS (a flag the user set keeps the user's value);
    libtpu reads it when jax first loads the TPU plugin."""
    current = os.environ.get("LIBTPU_INIT_ARGS", "")
    # By name, not by substring: --xla_tpu_enable_async_collective_fusion is a prefix of
    # ..._fusion_multiple_steps, which a user may set alone.
    named = {arg.split("=")[0] for arg in current.split()}
    missing = [f for f in LIBTPU_FLAGS if f.split("=")[0] not in named]
    if missing:
        os.environ["LIBTPU_INIT_ARGS"] = " ".join([current, *missing]).strip()


# A one-host slice of each generation, for libtpu's description of the compiling host.
_ONE_HOST = {"tpu-v4": "v4-8", "tpu-v5e": "v5litepod-4", "tpu-v5p": "v5p-8", "tpu-v6e": "v6e-4"}


def topology_name(device: str, chips: int) -> str:
    """('tpu-v5p', 64) -> 'v5p:4x4x4'."""
    if device not in CHIPS:
        raise SolarError(f"--compile needs a TPU slice (v4-N, v5p-N, v5litepod-N, v6e-N), got {device}")
    chip = CHIPS[device]
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if chips not in shapes:
        known = ", ".join(str(n) for n in shapes)
        raise SolarError(f"no {chip.topology_prefix} slice of {chips} chips to compile for; chips: {known}")
    return f"{chip.topology_prefix}:{shapes[chips]}"


def libtpu_available() -> bool:
    return bool(os.environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


# The host variables quiet_off_tpu set (not the user): compile_host_env may replace them.
_DEFAULTED: set[str] = set()


def _host_env(one_host: str) -> tuple[tuple[str, str], ...]:
    # libtpu describes the host it runs on from the GCE metadata server or these variables;
    # off a TPU VM it logs errors about them: say this is one small host.
    return (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", one_host),
            ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0"))


def _tpu_chips_attached() -> int:
    """TPU chips on this host's PCI bus, as jax counts them to decide it is on a TPU VM
    (1 where that scan is unavailable: assume chips, change nothing)."""
    if hardware_utils is None or not hasattr(hardware_utils, "num_available_tpu_chips_and_device_id"):
        return 1
    try:
        return hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except OSError:  # an unreadable /sys: the same
        return 1


def quiet_off_tpu() -> None:
    """With libtpu installed (the test extra) on a host without TPU chips, jax still loads the
    TPU plugin and libtpu prints five lines of errors about the host on every command's start;
    the host variables silence it (jax then finds no chip and uses the CPU or GPU). On a TPU
    VM, or where the user set them, nothing changes. Call before jax starts a backend."""
    if not libtpu_available() or _tpu_chips_attached():
        return
    for key, value in _host_env("v5p-8"):
        if key not in os.environ:
            os.environ[key] = value
            _DEFAULTED.add(key)


def compile_host_env(device: str) -> None:
    """Environment for libtpu on a host that only compiles; call before jax starts a backend
    (libtpu reads it when jax loads the TPU plugin)."""
    # Tests and benchmarks may load libtpu in several processes at once; without this its lock
    # file refuses the second. Ahead-of-time compiles share no chip, so nothing is contended.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    for key, value in _host_env(_ONE_HOST.get(device, "v5p-8")):  # harmless for compiles, but loud
        if key not in os.environ or key in _DEFAULTED:
            os.environ[key] = value
    apply_libtpu_flags()


def check_can_compile(device: str, chips: int) -> str:
    """The slice's topology name, once it is known that libtpu can compile for it here."""
    name = topology_name(device, chips)
    if not libtpu_available():
        raise SolarError("--compile needs the TPU compiler (libtpu): pip install 'jax[tpu]' "
                         "(it compiles for any slice on a CPU machine)")
    return name


def topology_devices(device: str, chips: int) -> list:
    """The devices of a TPU slice, for ahead-of-time compiles on a machine without one."""
    name = check_can_compile(device, chips)
    compile_host_env(device)
    try:
        # One device per chip, as jax meshes want and TPU VMs run: v4 and v5p chips' two
        # TensorCores as one ("megacore"); v5e and v6e chips have one. Hosts of 2 x 2 chips.
        config = "megacore" if CHIPS[device].dims == 3 else "default"
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu", chip_config_name=config,
                                                 chips_per_host_bounds=(2, 2, 1), num_slices=1).devices)
    except Exception as e:  # libtpu's own words, in one line
        raise SolarError(f"libtpu could not describe {name}: {str(e).splitlines()[0]}") from None
