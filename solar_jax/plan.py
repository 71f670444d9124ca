"""python -m solar_jax.plan: per-device memory of a training config on a device or slice, and whether it fits.

  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=v5p-128
  python -m solar_jax.plan --config=configs/cpt.py --device=h100 --num_devices=8
  # the real train step compiled for the slice by the TPU compiler (libtpu; no TPU needed)
  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=v5p-128 --compile
  # compile candidate meshes, remat policies and microbatch counts; print the best's overrides
  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=v5p-128 --search
  # the same for GPU hosts, compiled by XLA's GPU compiler (jax[cuda12]; no GPU needed): 2 hosts of 8 H100s
  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=h100x16 --compile
"""

from __future__ import annotations

from absl import flags

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.hardware import gpu
from solar_jax.hardware.chips import GPUS
from solar_jax.hardware import tpu
from solar_jax.planning import compiled as compiled_plan
from solar_jax.training.memory import parse_device, plan
from solar_jax.training.run_config import validate
from solar_jax.training.state import resolve_model, trainable_mask


def define() -> None:
    # The target hardware is not part of a run config: the same config plans for any slice.
    flags.DEFINE_string("device", "cpu", "v5p-128, v6e-256, v4-64, v5litepod-16, tpu-v5p, h100x8, h100x16, h200x8, "
                        "a100x8, b200x8, h100 (with --num_devices), cpu")
    flags.DEFINE_integer("num_devices", 0, "devices (not needed for a TPU slice name)")
    flags.DEFINE_bool("compile", False, "compile the train step for the TPU slice (libtpu) or the GPUs (XLA's GPU "
                      "compiler) and report XLA's memory, collectives, FLOPs and a step-time estimate")
    flags.DEFINE_bool("search", False, "compile candidate meshes, remat policies and microbatch counts for the "
                      "TPU slice or GPUs; print a table and the --config overrides of the best that fits")
    flags.DEFINE_string("gpu_spec", "", "a text GpuTargetConfigProto to compile for instead of the chip table's "
                        "(e.g. openxla/xla's xla/backends/gpu/target_config/specs/h100_sxm.txtpb)")
    flags.DEFINE_integer("search_limit", 8, "candidates compiled by --search (the fast planner orders them)")


def main(c) -> None:
    device, count = parse_device(flags.FLAGS.device, flags.FLAGS.num_devices)
    if flags.FLAGS.search_limit <= 0:
        raise SolarError(f"--search_limit must be positive, got {flags.FLAGS.search_limit}")
    spec = gpu.read_spec(flags.FLAGS.gpu_spec) if flags.FLAGS.gpu_spec else None
    if spec is not None and device not in GPUS:
        raise SolarError(f"--gpu_spec is for GPUs, not {flags.FLAGS.device}")
    if flags.FLAGS.compile or flags.FLAGS.search:
        if device in GPUS:  # before any work
            gpu.check_can_compile(device, count)
        else:
            tpu.check_can_compile(device, count)
            tpu.compile_host_env(device)  # before jax starts its backends below
        compiled_plan.without_persistent_cache()  # before jax's first compile
    validate(c, count)
    source = resolve_model(c)
    p = plan(c, source.config, device, count)
    print(f"model: {source.config.num_layers} layers, {source.config.num_params() / 1e9:.2f}B params; batch "
          f"{c.batch_size} x {c.seq_len}, grad_accum_steps={c.grad_accum_steps}, dtype {c.dtype}, remat {c.remat}")
    print(p.report())
    if flags.FLAGS.search:
        _search(c, source, device, count, spec)
    elif flags.FLAGS.compile:
        try:
            compiled = compiled_plan.compile_plan(c, source.config, device, count, trainable_mask(source), spec)
        except compiled_plan.DoesNotFit as e:
            print(f"does NOT fit: {e}")
            raise SystemExit(1)
        print(compiled.report())
        if not compiled.fits:
            raise SystemExit(1)
    elif p.fits is False:
        raise SystemExit(1)


def _search(c, source, device: str, count: int, spec: str | None) -> None:
    candidates = compiled_plan.search_candidates(c, source.config, device, count)
    if not candidates:
        raise SolarError(f"no mesh, remat and microbatch count the planner expects to fit {count} x {device}; "
                         "lower batch_size or seq_len, or take a larger slice")
    limit = flags.FLAGS.search_limit
    print(f"search: {len(candidates)} candidates the planner expects to fit; compiling the first {min(limit, len(candidates))}")
    done = compiled_plan.search(c, source.config, device, count, limit, trainable_mask(source), gpu_spec=spec)
    print(compiled_plan.search_table(done))
    if device in GPUS:
        print(f"(step time, tokens/s and MFU are ESTIMATES, not measurements: FLOPs at "
              f"{compiled_plan.GPU_EFFICIENCY:.0%} of the bf16 peak, collectives over NVLink and the hosts' NICs)")
    else:
        print(f"(step time, tokens/s and MFU are ESTIMATES from a cost model, not measurements; "
              f"{compiled_plan.PEAK_MARK_NOTE})")
    winner = compiled_plan.best(done)
    if winner is None:
        print("none of the compiled candidates fits")
        raise SystemExit(1)
    print(f"best: {winner.flags()}")


if __name__ == "__main__":
    cli.run(main, "cpt.py", define=define)
