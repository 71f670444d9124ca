"""MaxText's train step compiled for a TPU slice, run as a script with MaxText's own Python:

    PYTHONPATH=MAXTEXT/src python maxtext_worker.py OUT_DIR KEY=VALUE ...

The KEY=VALUE pairs are MaxText's config overrides (after its base.yml). It runs MaxText's
train_compile exactly, and saves what the compiled executable says of itself for
solar_jax/bench/vs_maxtext.py to read with solar_jax's own code: OUT_DIR/step.hlo.txt (the
optimized HLO), OUT_DIR/step.json (memory analysis, cost_analysis, compile seconds). It
never imports solar_jax, whose jax may not be MaxText's.

GPUs: MaxText's train_compile takes GPU targets ("a3") only with the GPUs attached (it uses
jax.devices()). With SOLAR_JAX_GPU_TARGET (a file holding a text GpuTargetConfigProto) and
SOLAR_JAX_GPU_TOPOLOGY ("1x1x8": slices x hosts x GPUs) set, its get_topology_mesh takes the
GPUs from XLA's deviceless GPU compiler instead, as solar_jax's plan --compile does; the rest
of train_compile (its mesh from the devices, its shardings, its step) is MaxText's own.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Run as a script, this file's folder leads sys.path: its sibling modules (eval.py, data.py,
# train.py, ...) must not stand in for MaxText's or its libraries' imports.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from absl import app  # noqa: E402
from maxtext.trainers.pre_train import train_compile  # noqa: E402


def _deviceless_gpu_mesh(config):
    """train_compile.get_topology_mesh for GPUs described, not attached."""
    import jax
    from jax.experimental.topologies import get_topology_desc
    from jax.sharding import AxisType, Mesh
    from maxtext.common.common_types import ShardMode
    from maxtext.utils import maxtext_utils

    with open(os.environ["SOLAR_JAX_GPU_TARGET"]) as f:
        target = f.read()
    devices = get_topology_desc(platform="cuda", target_config=target,
                                topology=os.environ["SOLAR_JAX_GPU_TOPOLOGY"]).devices
    jax.config.update("jax_remove_size_one_mesh_axis_from_type", config.remove_size_one_mesh_axis_from_type)
    grid = maxtext_utils.create_device_mesh(config, devices)
    axis_type = AxisType.Explicit if config.shard_mode == ShardMode.EXPLICIT else AxisType.Auto
    return Mesh(grid, config.mesh_axes, axis_types=(axis_type,) * len(config.mesh_axes))


def main(out_dir: str, overrides: list[str]) -> None:
    base = os.path.join(os.path.dirname(train_compile.__file__), "..", "..", "configs", "base.yml")
    compile_step = train_compile.jit_and_compile

    def saving(*args, **kwargs):
        start = time.perf_counter()
        compiled = compile_step(*args, **kwargs)
        seconds = time.perf_counter() - start
        with open(os.path.join(out_dir, "step.hlo.txt"), "w") as f:
            f.write(compiled.as_text())
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, list) else cost
        m = compiled.memory_analysis()
        record = dict(compile_seconds=seconds,
                      cost={k: float(v) for k, v in cost.items() if k in ("flops", "optimal_seconds", "bytes accessed")},
                      memory=dict(arguments=m.argument_size_in_bytes, temporaries=m.temp_size_in_bytes,
                                  outputs=m.output_size_in_bytes, aliased=m.alias_size_in_bytes,
                                  code=m.generated_code_size_in_bytes))
        with open(os.path.join(out_dir, "step.json"), "w") as f:
            json.dump(record, f)
        return compiled

    train_compile.jit_and_compile = saving
    if os.environ.get("SOLAR_JAX_GPU_TARGET"):
        train_compile.get_topology_mesh = _deviceless_gpu_mesh
    app.run(train_compile.main, argv=["train_compile", os.path.normpath(base), *overrides])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
