"""Tokens/s and peak memory of one training step.

solar_jax's jitted step (AdamW, float32, global-norm clipping) against a `transformers` +
torch AdamW step with the same hyperparameters, on the same model (SmolLM2-135M up-scaled
30 -> 44 layers, or a tiny model), the same batch (one file both sides read) and sequence
length, in the same run. Each side runs in its own process (peak RSS is its own), in
back-to-back pairs (this machine's speed drifts by 15-25% over minutes), both under the
same allocator.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import ml_collections
import numpy as np
from flax import nnx

from solar_jax.bench.common import gib, run_worker
from solar_jax.errors import SolarError
from solar_jax.host_malloc import hugepage_malloc_env
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.surgery.streaming import upscale_hf
from solar_jax.surgery.upscale import solar_slices
from solar_jax.training.run_config import base_config
from solar_jax.weights import hf
from solar_jax.weights.real_model import ensure_real_model

HPARAMS = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)
MODELS = ("smollm2-44", "tiny", "all")
TINY = ModelConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=8, num_heads=8,
                   num_kv_heads=4, head_dim=32, max_position_embeddings=2048)


def _prepare_models(which: str, scratch: Path) -> dict[str, Path]:
    out = {}
    if which in ("smollm2-44", "all"):
        out["smollm2 up-scaled 44L"] = scratch / "smollm2-44"
        upscale_hf([str(ensure_real_model())], solar_slices(30, 8), str(out["smollm2 up-scaled 44L"]), progress=False)
    if which in ("tiny", "all"):
        out["tiny 8L d256"] = scratch / "tiny"
        hf.save_hf(model_lib.Transformer(TINY, rngs=nnx.Rngs(0)), out["tiny 8L d256"])
    return out


def _write_batch(path: Path, vocab: int, batch_size: int, seq_len: int) -> None:
    ids = np.random.default_rng(0).integers(0, vocab, (batch_size, seq_len + 1))
    np.savez(path, inputs=ids[:, :-1].astype(np.int32), targets=ids[:, 1:].astype(np.int32))


def _allocator() -> str:
    name = "jemalloc (LD_PRELOAD)" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    tunables = (hugepage_malloc_env(dict(os.environ)) or os.environ).get("GLIBC_TUNABLES")
    return name + (f" ({tunables})" if tunables else "")


def main(c: ml_collections.ConfigDict) -> None:
    if c.model not in MODELS:
        raise SolarError(f"unknown model {c.model!r} for the train benchmark; known: {', '.join(MODELS)}")
    remat = c.remat or base_config().remat
    if remat not in model_lib.REMAT_POLICIES:
        raise SolarError(f"unknown remat {remat!r}; known: {', '.join(model_lib.REMAT_POLICIES)}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        models = _prepare_models(c.model, Path(scratch))
        print(f"train step, float32, batch {c.batch_size} x {c.seq_len} tokens, median of {c.steps} steps after "
              f"{c.warmup} warmup, {c.pairs} back-to-back pairs, {os.cpu_count()} CPU cores, {_allocator()}, "
              f"solar_jax remat {remat}")
        print(f"{'model':24s}{'side':12s}{'tokens/s':>10s}{'step s':>9s}{'peak RSS':>11s}{'loss@0':>9s}")
        for name, model_dir in models.items():
            batch_file = Path(scratch) / f"{model_dir.name}-batch.npz"
            vocab = hf.read_hf_config(model_dir)["vocab_size"]
            _write_batch(batch_file, vocab, c.batch_size, c.seq_len)
            job = dict(model_dir=str(model_dir), batch_file=str(batch_file), steps=c.steps, warmup=c.warmup,
                       hparams=HPARAMS)
            runs: dict[str, list] = {"solar_jax": [], "peer": []}
            for _ in range(c.pairs):
                runs["solar_jax"].append(run_worker("solar_jax", "train", dict(job, remat=remat)))
                runs["peer"].append(run_worker("peer", "train", job))
            ratios = [j["tokens_per_second"] / t["tokens_per_second"] for j, t in zip(runs["solar_jax"], runs["peer"])]
            for side, label in (("solar_jax", "solar_jax"), ("peer", "torch")):
                r = runs[side]
                print(f"{name:24s}{label:12s}{statistics.median(x['tokens_per_second'] for x in r):10.1f}"
                      f"{statistics.median(x['step_seconds'] for x in r):9.2f}"
                      f"{gib(statistics.median(x['peak_rss'] for x in r)):>11s}{r[0]['first_loss']:9.4f}")
            print(f"{name:24s}ratio solar_jax/torch tokens/s per pair: {', '.join(f'{x:.2f}x' for x in ratios)} "
                  f"(target: > 1.0x: {'MET' if min(ratios) > 1.0 else 'MISSED'})")
