"""solar_jax's TIES under both numerics against mergekit 0.1.5's output on the tensors of
mergekit_dump.py (run that first, with mergekit's Python; this with solar_jax's):
    MK_VENV/bin/python docs/results/merge-2026-12-05/mergekit_dump.py
    .venv/bin/python docs/results/merge-2026-12-05/numerics_mergekit.py"""
import ml_dtypes
import numpy as np

from solar_jax.surgery.merge import MergeSpec, merge_stacks

a, b, mk = (np.load(f"/tmp/mk_{k}.npy") for k in ("a", "b", "out"))
for numerics in ("exact", "mergekit"):
    spec = MergeSpec("ties", 2, base=0, params={"normalize": True}, model_params=[{}, {"weight": 1.0, "density": 0.5}],
                     numerics=numerics, math_dtype="bfloat16")
    out = merge_stacks(spec, [a[None], b[None]], ["x"], [0.0])[0].astype(ml_dtypes.bfloat16).astype(np.float32)
    print(f"numerics={numerics}: elements differing from mergekit 0.1.5's output: {(out != mk).mean():.4f}")
