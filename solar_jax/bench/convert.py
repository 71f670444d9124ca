"""Import + export of an HF dir: solar_jax against transformers, same run, same input.

solar_jax: load_hf_params + save_hf_params (streamed, float32 params in memory).
transformers: from_pretrained + save_pretrained of the same dir (float32).
Each side runs in its own process (so peak RSS is its own), alternating, `repeats` times;
we report medians, the ratio solar_jax / transformers, and the memory target: peak above
the process's baseline after imports <= model bytes + largest shard bytes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from solar_jax.bench.common import Timer, current_rss_bytes, gib, median, peak_rss_bytes, report, run_worker


def _worker(side: str, model_dir: str, out_dir: str) -> None:
    if side == "solar_jax":
        import jax  # noqa: F401  (imports count in the baseline, not in the work)

        from solar_jax.weights import hf
        from solar_jax.models.config import ModelConfig

        baseline = current_rss_bytes()
        with Timer() as t:
            config = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
            params = hf.load_hf_params(model_dir, config)
            hf.save_hf_params(params, config, out_dir, source_dir=model_dir)
    else:
        import torch
        import transformers

        baseline = current_rss_bytes()
        with Timer() as t:
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            model.save_pretrained(out_dir)
    report(dict(seconds=t.seconds, peak_rss=peak_rss_bytes(), baseline_rss=baseline))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m solar_jax.bench convert")
    parser.add_argument("--model_dir", default=None, help="HF dir (default: the real model SmolLM2-135M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["solar_jax", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.model_dir, args.output_dir)

    from solar_jax.weights.hf import open_checkpoint
    from solar_jax.weights.real_model import ensure_real_model

    model_dir = Path(args.model_dir or ensure_real_model())
    files = {r.path for r in open_checkpoint(model_dir).values()}
    model_bytes = sum(Path(f).stat().st_size for f in files)
    largest_shard = max(Path(f).stat().st_size for f in files)
    results: dict[str, list] = {"solar_jax": [], "transformers": []}
    scratch = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        for i in range(args.repeats):
            for side in results:
                out = scratch / f"{side}-{i}"
                results[side].append(run_worker("solar_jax.bench.convert",
                                                ["--worker", side, "--model_dir", str(model_dir), "--output_dir", str(out)]))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"convert (import + export) of {model_dir.name}: {gib(model_bytes)} in {len(files)} file(s), "
          f"median of {args.repeats}")
    print(f"{'':14s}{'wall s':>9s}{'peak RSS':>12s}{'peak - baseline':>18s}")
    row = {}
    for side, rs in results.items():
        row[side] = (median(rs, "seconds"), median(rs, "peak_rss"),
                     median([dict(d=r["peak_rss"] - r["baseline_rss"]) for r in rs], "d"))
        print(f"{side:14s}{row[side][0]:9.2f}{gib(row[side][1]):>12s}{gib(row[side][2]):>18s}")
    (ts, tp, td), (hs, hp, hd) = row["solar_jax"], row["transformers"]
    print(f"ratio solar_jax/transformers: time {ts / hs:.2f}x, peak RSS {tp / hp:.2f}x, "
          f"peak above baseline {td / hd:.2f}x")
    target = model_bytes + largest_shard
    print(f"target: time <= transformers: {'MET' if ts <= hs else 'MISSED'}; peak above baseline "
          f"{gib(td)} <= model + largest shard {gib(target)}: {'MET' if td <= target else 'MISSED'}")


if __name__ == "__main__":  # worker processes
    import sys

    main(sys.argv[1:])
