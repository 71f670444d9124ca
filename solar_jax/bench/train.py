"""python -m solar_jax.bench train: tokens/s and peak memory of one training step.

solar_jax's jitted step (AdamW, float32, global-norm clipping) against a `transformers` +
torch AdamW step with the same hyperparameters, on the same model (SmolLM2-135M up-scaled
30 -> 44 layers, or the tiny preset), the same batch and sequence length, in the same run.
Each side runs in its own process (peak RSS is its own), in back-to-back pairs (this
machine's speed drifts by 15-25% over minutes), both under the same allocator. MFU is
printed where the device's peak is known (GPU/TPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from solar_jax.bench.common import gib, report, run_worker
from solar_jax.models.transformer import REMAT_POLICIES
from solar_jax.training.run_config import base_config

HPARAMS = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)


def _batch(vocab: int, batch: int, seq: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, seq + 1))
    return ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32)


def _worker_jax(model_dir: str, batch: int, seq: int, steps: int, warmup: int, remat: str) -> None:
    import time

    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from solar_jax.weights import hf
    from solar_jax.models import transformer as model_lib
    from solar_jax.models.config import ModelConfig
    from solar_jax.training.optim import make_optimizer
    from solar_jax.training.step import make_train_step

    config = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    params = hf.load_hf_params(model_dir, config)
    c = ml_collections.ConfigDict(dict(learning_rate=HPARAMS["lr"], end_lr_ratio=1.0, schedule="constant",
                                       warmup_steps=0, num_steps=steps + warmup, weight_decay=HPARAMS["weight_decay"],
                                       decay_embeddings=True, adam_b1=HPARAMS["b1"], adam_b2=HPARAMS["b2"],
                                       adam_eps=HPARAMS["eps"], grad_clip=HPARAMS["clip"]))
    tx = make_optimizer(c, params)
    graphdef, _ = nnx.split(model_lib.abstract_model(config, remat=remat))
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    x, y = _batch(config.vocab_size, batch, seq)
    b = dict(inputs=jnp.asarray(x), targets=jnp.asarray(y), segment_ids=jnp.ones_like(jnp.asarray(x)),
             loss_mask=jnp.ones(x.shape, jnp.float32))
    step = jax.jit(make_train_step(graphdef, tx, 1), donate_argnums=0)
    times, losses = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = step(state, b)
        losses.append(float(m["loss"]))
        times.append(time.perf_counter() - t0)
    _report(times[warmup:], batch * seq, losses, config)


def _worker_torch(model_dir: str, batch: int, seq: int, steps: int, warmup: int, remat: str) -> None:
    import time

    import torch
    import transformers

    from solar_jax.weights import hf
    from solar_jax.models.config import ModelConfig

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=HPARAMS["lr"], betas=(HPARAMS["b1"], HPARAMS["b2"]),
                            eps=HPARAMS["eps"], weight_decay=HPARAMS["weight_decay"])
    x, y = _batch(model.config.vocab_size, batch, seq)
    x, y = torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long)
    times, losses = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HPARAMS["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
    _report(times[warmup:], batch * seq, losses, ModelConfig.from_hf_config(hf.read_hf_config(model_dir)))


def _report(times, tokens_per_step, losses, config):
    from solar_jax.bench.common import peak_rss_bytes

    median = statistics.median(times)
    report(dict(step_seconds=median, tokens_per_second=tokens_per_step / median, peak_rss=peak_rss_bytes(),
                first_loss=losses[0], params=config.num_params()))


def _prepare_models(which: str, scratch: Path) -> dict[str, str]:
    from solar_jax.weights.real_model import ensure_real_model
    from solar_jax.surgery.streaming import upscale_hf
    from solar_jax.surgery.upscale import solar_slices

    out = {}
    if which in ("smollm2-44", "all"):
        src = ensure_real_model()
        dst = scratch / "smollm2-44"
        upscale_hf([str(src)], solar_slices(30, 8), str(dst), progress=False)
        out["smollm2 up-scaled 44L"] = str(dst)
    if which in ("tiny", "all"):
        import numpy as np
        from flax import nnx

        from solar_jax.weights import hf
        from solar_jax.models import transformer as model_lib
        from solar_jax.models.config import ModelConfig

        config = ModelConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=8, num_heads=8,
                             num_kv_heads=4, head_dim=32, max_position_embeddings=2048)
        model = model_lib.Transformer(config, rngs=nnx.Rngs(0))
        dst = scratch / "tiny"
        hf.save_hf(model, dst)
        out["tiny 8L d256"] = str(dst)
        del np
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m solar_jax.bench train")
    parser.add_argument("--model", choices=["smollm2-44", "tiny", "all"], default="all")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2, help="back-to-back solar_jax/torch pairs")
    parser.add_argument("--remat", choices=REMAT_POLICIES, default=base_config().remat,
                        help="solar_jax's remat policy (default: the train config's)")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from solar_jax.cli import apply_default_xla_flags

        apply_default_xla_flags()  # as the train command does
        fn = _worker_jax if args.worker == "jax" else _worker_torch
        return fn(args.model_dir, args.batch, args.seq, args.steps, args.warmup, args.remat)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        models = _prepare_models(args.model, Path(scratch))
        from solar_jax.host_malloc import hugepage_malloc_env

        allocator = "jemalloc (LD_PRELOAD)" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
        tunables = (hugepage_malloc_env(dict(os.environ)) or os.environ).get("GLIBC_TUNABLES")
        allocator += f" ({tunables})" if tunables else ""
        print(f"train step, float32, batch {args.batch} x {args.seq} tokens, median of {args.steps} steps after "
              f"{args.warmup} warmup, {args.pairs} back-to-back pairs, {os.cpu_count()} CPU cores, {allocator}, "
              f"solar_jax remat {args.remat}")
        print(f"{'model':24s}{'side':12s}{'tokens/s':>10s}{'step s':>9s}{'peak RSS':>11s}{'loss@0':>9s}")
        for name, model_dir in models.items():
            runs: dict[str, list] = {"jax": [], "torch": []}
            for _ in range(args.pairs):
                for side in ("jax", "torch"):
                    common = ["--worker", side, "--model_dir", model_dir, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
                              "--remat", args.remat]
                    runs[side].append(run_worker("solar_jax.bench.train", common))
            ratios = [j["tokens_per_second"] / t["tokens_per_second"] for j, t in zip(runs["jax"], runs["torch"])]
            for side, label in (("jax", "solar_jax"), ("torch", "torch")):
                r = runs[side]
                print(f"{name:24s}{label:12s}{statistics.median(x['tokens_per_second'] for x in r):10.1f}"
                      f"{statistics.median(x['step_seconds'] for x in r):9.2f}"
                      f"{gib(statistics.median(x['peak_rss'] for x in r)):>11s}{r[0]['first_loss']:9.4f}")
            print(f"{name:24s}ratio solar_jax/torch tokens/s per pair: {', '.join(f'{x:.2f}x' for x in ratios)} "
                  f"(target: > 1.0x: {'MET' if min(ratios) > 1.0 else 'MISSED'})")


if __name__ == "__main__":
    main(sys.argv[1:])
