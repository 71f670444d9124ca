"""python -m solar_jax.bench merge: linear and SLERP merges against mergekit."""

from solar_jax.bench.vs_mergekit import bench


def main(argv):
    bench("merge", argv)
