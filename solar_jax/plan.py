"""python -m solar_jax.plan: per-device memory of a training config on a device or slice, and whether it fits.

  python -m solar_jax.plan --config=configs/cpt.py:solar --config.model_preset=mistral-7b --device=v5p-128
  python -m solar_jax.plan --config=configs/cpt.py --device=h100 --num_devices=8
"""

from __future__ import annotations

from absl import flags

from solar_jax import cli
from solar_jax.training.plan import parse_device, plan
from solar_jax.training.run_config import validate
from solar_jax.training.state import resolve_model


def define() -> None:
    # The target hardware is not part of a run config: the same config plans for any slice.
    flags.DEFINE_string("device", "cpu", "v5p-128, v6e-256, v4-64, tpu-v5p, h100, h200, a100, cpu")
    flags.DEFINE_integer("num_devices", 0, "devices (not needed for a TPU slice name)")


def main(c) -> None:
    device, count = parse_device(flags.FLAGS.device, flags.FLAGS.num_devices)
    validate(c, count)
    source = resolve_model(c)
    p = plan(c, source.config, device, count)
    print(f"model: {source.config.num_layers} layers, {source.config.num_params() / 1e9:.2f}B params; batch "
          f"{c.batch_size} x {c.seq_len}, grad_accum_steps={c.grad_accum_steps}, dtype {c.dtype}, remat {c.remat}")
    print(p.report())
    if p.fits is False:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main, "cpt.py", define=define)
