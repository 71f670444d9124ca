"""TIES with one model (weight 1, density 0.5, normalize) on two independent bf16 tensors of
4M elements: mergekit 0.1.5's own functions against solar_jax's exact numerics. Run with the
Python of mergekit's venv (the merge benchmark makes it: ~/.cache/solar_jax/bench-mergekit-venv)
plus ml_dtypes:  python docs/results/merge-2026-12-05/ties_vs_mergekit.py
Output: ties_vs_mergekit.txt beside this file."""

import ml_dtypes
import numpy as np
import torch
from mergekit.sparsify import magnitude

torch.manual_seed(0)
n, density = 4_000_000, 0.5
a = (torch.randn(n) * 0.02).to(torch.bfloat16)
b = (torch.randn(n) * 0.02).to(torch.bfloat16)
d = b - a  # mergekit: the task vector in the merge's dtype
mk_mask = (magnitude(d, density) != 0).numpy()
mk = (a + magnitude(d, density)).float().numpy()  # base + mixed delta (divisor 1 where kept)

A, B = a.float().numpy(), b.float().numpy()
D = B - A  # solar_jax: exact float32 task vector
k = int(density * n)
keep = np.zeros(n, bool)
keep[np.argsort(-np.abs(D), kind="stable")[:k]] = True
ours = (A + D * keep).astype(ml_dtypes.bfloat16).astype(np.float32)

print(f"elements that differ: {(ours != mk).mean():.4f}")
print(f"  kept by one side only (a whole delta apart): {(mk_mask != keep).mean():.4f}")
both = mk_mask & keep
print(f"  kept by both, rounded apart (mergekit: round(a + round(b - a)), solar_jax: b): "
      f"{(mk[both] != B[both]).sum() / n:.4f}")
D16 = np.abs(d.float().numpy())
cut = np.sort(D16)[n - k]
print(f"bf16 task-vector magnitudes equal to the cut: {(D16 == cut).mean():.4f}")
stable = np.zeros(n, bool)
stable[np.argsort(-D16, kind="stable")[:k]] = True
tied = D16 == cut
print(f"of those, mergekit kept the same as a stable sort would: {(mk_mask[tied] == stable[tied]).mean():.3f}")
