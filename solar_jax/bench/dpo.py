"""python -m solar_jax.bench dpo: DPO step throughput, reference frozen vs precomputed.

The same model (the real SmolLM2-135M, or the tiny preset), data, batch and length; each
mode in its own process (peak RSS is its own), back to back. "frozen" keeps a copy of the
initial model and runs it every step; "precomputed" runs it once over the data first
(its time reported apart) and then only reads stored log-probs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from solar_jax.bench.common import gib, report, run_worker


def _config(mode: str, model: str, steps: int, batch: int, seq: int):
    from solar_jax.config_files import load_config

    c = load_config("dpo.py", "tiny" if model == "tiny" else None)
    c.num_steps, c.batch_size, c.seq_len = steps, batch, seq
    c.dpo.reference = mode
    c.export.enabled = False
    c.eval_every = c.checkpoint_every = 10**6  # the measurement is the train step
    c.eval_batches = 1
    c.data.num_builtin = max(64, 4 * batch * steps)
    return c


def run(mode: str, model: str, steps: int, batch: int, seq: int, workdir: str) -> None:
    import jax

    from solar_jax.bench.common import peak_rss_bytes
    from solar_jax.training.metrics import read_metrics
    from solar_jax.training.loop import train_and_evaluate

    c = _config(mode, model, steps, batch, seq)
    start = time.perf_counter()
    train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    total = time.perf_counter() - start
    rows = [r for r in read_metrics(Path(workdir) / "metrics.jsonl") if r.get("pairs_per_second")]
    rates = [r["pairs_per_second"] for r in rows[2:]] or [r["pairs_per_second"] for r in rows]
    report(dict(pairs_per_second=statistics.median(rates), peak_rss=peak_rss_bytes(), total_seconds=total,
                step_seconds=statistics.median(r["step_seconds"] for r in rows[2:] or rows)))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m solar_jax.bench dpo")
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=160)
    parser.add_argument("--worker", choices=["frozen", "precomputed"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from solar_jax.cli import apply_default_xla_flags

        apply_default_xla_flags()
        return run(args.worker, args.model, args.steps, args.batch, args.seq, args.workdir)
    print(f"DPO on {args.model}: {args.batch} pairs x {args.seq} tokens, {args.steps} steps, float32, 1 device")
    print(f"{'reference':14s}{'pairs/s':>9s}{'step s':>9s}{'peak RSS':>11s}{'whole run s':>13s}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as scratch:
        for mode in ("frozen", "precomputed"):
            r = run_worker("solar_jax.bench.dpo", ["--worker", mode, "--model", args.model, "--steps", str(args.steps),
                                                   "--batch", str(args.batch), "--seq", str(args.seq),
                                                   "--workdir", str(Path(scratch) / mode)])
            results[mode] = r
            print(f"{mode:14s}{r['pairs_per_second']:9.3f}{r['step_seconds']:9.2f}{gib(r['peak_rss']):>11s}"
                  f"{r['total_seconds']:13.1f}")
    f, p = results["frozen"], results["precomputed"]
    print(f"precomputed / frozen: {p['pairs_per_second'] / f['pairs_per_second']:.2f}x pairs/s, "
          f"{p['peak_rss'] / f['peak_rss']:.2f}x peak RSS (the precompute pass is in 'whole run')")


if __name__ == "__main__":
    main(sys.argv[1:])
