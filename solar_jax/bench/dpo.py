"""DPO step throughput, reference frozen vs precomputed.

The same model (the real SmolLM2-135M, or the tiny preset), data, batch and length; each
mode in its own process (peak RSS is its own), back to back. "frozen" keeps a copy of the
initial model and runs it every step; "precomputed" runs it once over the data first
(its time reported apart) and then only reads stored log-probs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ml_collections

from solar_jax.bench.common import gib, run_worker
from solar_jax.config_files import load_config


def dpo_config(reference: str, model: str, steps: int, batch_size: int, seq_len: int) -> ml_collections.ConfigDict:
    c = load_config("dpo.py", "tiny" if model == "tiny" else None)
    c.num_steps, c.batch_size, c.seq_len = steps, batch_size, seq_len
    c.dpo.reference = reference
    c.export.enabled = False
    c.eval_every = c.checkpoint_every = 10**6  # the measurement is the train step
    c.eval_batches = 1
    c.data.num_builtin = max(64, 4 * batch_size * steps)
    return c


def main(c: ml_collections.ConfigDict) -> None:
    print(f"DPO on {c.model}: {c.batch_size} pairs x {c.seq_len} tokens, {c.steps} steps, float32, 1 device")
    print(f"{'reference':14s}{'pairs/s':>9s}{'step s':>9s}{'peak RSS':>11s}{'whole run s':>13s}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as scratch:
        for reference in ("frozen", "precomputed"):
            r = run_worker("solar_jax", "dpo", dict(reference=reference, model=c.model, steps=c.steps,
                                                    batch_size=c.batch_size, seq_len=c.seq_len,
                                                    workdir=str(Path(scratch) / reference)))
            results[reference] = r
            print(f"{reference:14s}{r['pairs_per_second']:9.3f}{r['step_seconds']:9.2f}{gib(r['peak_rss']):>11s}"
                  f"{r['total_seconds']:13.1f}")
    f, p = results["frozen"], results["precomputed"]
    print(f"precomputed / frozen: {p['pairs_per_second'] / f['pairs_per_second']:.2f}x pairs/s, "
          f"{p['peak_rss'] / f['peak_rss']:.2f}x peak RSS (the precompute pass is in 'whole run')")
