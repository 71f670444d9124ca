"""python -m solar_jax.bench upscale: depth up-scaling against mergekit's passthrough."""

from solar_jax.bench.vs_mergekit import bench


def main(argv):
    bench("upscale", argv)
