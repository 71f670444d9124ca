"""python -m solar_jax.bench NAME [args]: run one benchmark (see solar_jax/bench/__init__.py)."""

import importlib
import sys

BENCHMARKS = ("convert", "upscale", "merge", "train", "dpo", "eval", "plan")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"error: usage: python -m solar_jax.bench {{{','.join(BENCHMARKS)}}} [args]", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(f"solar_jax.bench.{sys.argv[1]}").main(sys.argv[2:])


if __name__ == "__main__":
    main()
