"""Multi-host start-up: one `jax.distributed.initialize` call, decided from flags or env.

The flags are defined by the commands that train or evaluate (cli.define_distributed_flags).

  --distributed=auto (default): initialise when the environment names a cluster of more than
      one process: JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES > 1 (GPU hosts, our
      launcher), a multi-worker TPU VM slice (TPU_WORKER_HOSTNAMES, or MEGASCALE_*),
      SLURM with more than one task, or Open MPI with more than one rank.
  --distributed=on: always (TPU pod slices auto-detect the rest; fails loudly elsewhere).
  --distributed=off: never (one process, e.g. a debugging session on one worker).
  --coordinator_address / --num_processes / --process_id override the env.

Must run before anything touches a jax backend (jax.devices(), an array).
"""

from __future__ import annotations

import os
from typing import Any

import jax

from solar_jax.errors import SolarError

MODES = ("auto", "on", "off")


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SolarError(f"environment variable {name}={value!r} is not an integer") from None


def cluster_in_env() -> str | None:
    """Which multi-process launcher the environment shows, or None for a single process."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and (_int_env("JAX_NUM_PROCESSES") or 1) > 1:
        return "JAX_COORDINATOR_ADDRESS"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "TPU slice"
    if os.environ.get("SLURM_JOB_ID") and (_int_env("SLURM_NTASKS") or 1) > 1:
        return "SLURM"
    if (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    return None


def settings(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
             process_id: int = -1) -> dict[str, Any] | None:
    """The keyword arguments for jax.distributed.initialize, or None to stay single-process.
    Raises SolarError on an inconsistent combination (before any backend starts)."""
    if mode not in MODES:
        raise SolarError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or _int_env("JAX_NUM_PROCESSES") or 0
    if process_id < 0:
        env_id = _int_env("JAX_PROCESS_ID")
        process_id = -1 if env_id is None else env_id
    if mode == "off":
        return None
    explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
    if mode == "auto" and not explicit and cluster_in_env() is None:
        return None
    if explicit and not (coordinator_address and num_processes > 0 and process_id >= 0):
        raise SolarError("a multi-process start needs all of --coordinator_address (host:port), --num_processes "
                         "and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if explicit and not 0 <= process_id < num_processes:
        raise SolarError(f"--process_id={process_id} must be in [0, {num_processes})")
    if explicit and num_processes == 1:
        return None
    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    # A dead peer should stop the survivors within a minute, not the default 100 s.
    heartbeat = _int_env("SOLAR_JAX_HEARTBEAT_TIMEOUT")
    if heartbeat:
        kwargs["heartbeat_timeout_seconds"] = heartbeat
    timeout = _int_env("SOLAR_JAX_INIT_TIMEOUT")
    if timeout:
        kwargs["initialization_timeout"] = timeout
    return kwargs


def initialize(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> bool:
    """Starts jax.distributed when asked (see module doc); returns whether it did."""
    kwargs = settings(mode, coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        where = kwargs.get("coordinator_address", "auto-detected")
        raise SolarError(f"jax.distributed.initialize failed (coordinator {where}): "
                         f"{' '.join(str(e).split())[:300]}") from None
    return True
