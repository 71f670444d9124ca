"""Import + export of an HF dir: solar_jax against transformers, same run, same input.

solar_jax: load_hf_params + save_hf_params (streamed, float32 params in memory).
transformers: from_pretrained + save_pretrained of the same dir (float32).
Each side runs in its own process (so peak RSS is its own), alternating, `repeats` times;
we report medians, the ratio solar_jax / transformers, and the memory target: peak above
the process's baseline after imports <= model bytes + largest shard bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import ml_collections

from solar_jax.bench.common import gib, median, run_worker
from solar_jax.weights.hf import open_checkpoint
from solar_jax.weights.real_model import ensure_real_model


def main(c: ml_collections.ConfigDict) -> None:
    model_dir = Path(c.model_dir or ensure_real_model())
    files = {r.path for r in open_checkpoint(model_dir).values()}
    model_bytes = sum(Path(f).stat().st_size for f in files)
    largest_shard = max(Path(f).stat().st_size for f in files)
    results: dict[str, list] = {"solar_jax": [], "transformers": []}
    scratch = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        for i in range(c.repeats):
            for side in results:
                out = scratch / f"{side}-{i}"
                worker_side = "solar_jax" if side == "solar_jax" else "peer"
                results[side].append(run_worker(worker_side, "convert", dict(model_dir=str(model_dir),
                                                                              output_dir=str(out))))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"convert (import + export) of {model_dir.name}: {gib(model_bytes)} in {len(files)} file(s), "
          f"median of {c.repeats}")
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
