"""python -m solar_jax.bench --config=configs/bench.py:NAME [--config.x=y]: one benchmark."""

import ml_collections

from solar_jax import cli
from solar_jax.bench import convert, data, dpo, eval as eval_bench, plan, plan_tpu, tpu, train, vs_maxtext, vs_mergekit

BENCHMARKS = dict(convert=convert.main, upscale=vs_mergekit.bench, merge=vs_mergekit.bench, train=train.main,
                  dpo=dpo.main, eval=eval_bench.main, plan=plan.main, plan_tpu=plan_tpu.main, tpu=tpu.main,
                  maxtext=vs_maxtext.main, data=data.main)


def main(c: ml_collections.ConfigDict) -> None:
    BENCHMARKS[c.benchmark](c)


if __name__ == "__main__":
    cli.run(main, "bench.py")
