"""mergekit's merge formulas on stacks of float32 tensors with a leading layer axis L.

One HF tensor per layer, so the same formulas merge stacked param trees in memory and HF
directories streamed tensor by tensor (L = 1). Math is float32, only the output is rounded
to the output dtype; SLERP's norms and dot products accumulate in float64 (a float32 dot
over a 28M-element embedding rounds cos 0.99729 to 1.0 and flips SLERP onto its lerp branch).

mergekit (0.1.5) computes the task-arithmetic family in the merge's dtype instead: with
`dtype: bfloat16` each task vector x - base is rounded to bf16 before it is trimmed, weighted,
summed and added back, so a kept element comes out as round(base + round(x - base)), not x
(on two independent bf16 tensors, 23.7% of the elements differ by that rounding), and DARE
rescales the kept values to the task vector's L1 norm, not by 1 / density as the DARE paper
does. task_arithmetic(..., mergekit_dtype=...) reproduces both ("numerics: mergekit").
"""

from __future__ import annotations

import zlib
from typing import Sequence

import ml_dtypes
import numpy as np

from solar_jax.errors import SolarError

DOT_THRESHOLD = 0.9995  # |cos| above this: the tensors are colinear, SLERP falls back to lerp
_EPS = 1e-8
_CHUNK = 1 << 22  # elements per float64 accumulation block (bounds the temporary memory)


def _bcast(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[L] -> [L, 1, ..., 1] float32 to broadcast against x [L, ...]."""
    return v.astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def dot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-layer dot products of [L, ...] arrays, accumulated in float64 block by block."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    out = np.zeros(a.shape[0], np.float64)
    for start in range(0, a2.shape[1], _CHUNK):
        sl = slice(start, start + _CHUNK)
        out += np.einsum("lp,lp->l", a2[:, sl].astype(np.float64), b2[:, sl].astype(np.float64))
    return out


def linear(xs: Sequence[np.ndarray], weights: Sequence[np.ndarray], normalize: bool = True) -> np.ndarray:
    """sum_i w_i x_i (/ sum_i w_i when normalize), per layer."""
    total = np.sum(weights, axis=0)
    if normalize and np.any(np.abs(total) < 1e-12):
        raise SolarError(f"linear merge weights sum to zero ({[float(w[0]) for w in weights]}); "
                         "cannot normalise")
    out = sum(x * _bcast(w, x) for x, w in zip(xs, weights))
    return out / _bcast(total, out) if normalize else out


def slerp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spherical interpolation per layer slice from a (t=0) to b (t=1), mergekit's formula:
    directions from the flattened tensors, lerp when |cos| > 0.9995."""
    na, nb = np.sqrt(dot64(a, a)), np.sqrt(dot64(b, b))
    # mergekit leaves a tensor unnormalised when its norm is <= eps.
    na, nb = np.where(na > _EPS, na, 1.0), np.where(nb > _EPS, nb, 1.0)
    dot = dot64(a, b) / (na * nb)
    colinear = np.abs(dot) > DOT_THRESHOLD
    theta0 = np.arccos(np.clip(dot, -1.0, 1.0))
    sin0 = np.where(colinear, 1.0, np.sin(theta0))
    s0 = np.where(colinear, 1.0 - t, np.sin(theta0 - theta0 * t) / sin0)
    s1 = np.where(colinear, t, np.sin(theta0 * t) / sin0)
    return _bcast(s0, a) * a + _bcast(s1, b) * b


def magnitude_mask(x: np.ndarray, density: float) -> np.ndarray:
    """Keeps the int(density * size) largest |x| of one tensor (TIES trim). Equal magnitudes
    at the cut are kept in index order, first come first kept (a stable descending sort's
    choice), so the mask is the same on every machine. mergekit takes them in
    torch.argsort's unspecified order (measured: the stable choice on 83-90% of them)."""
    if density >= 1:
        return np.ones(x.shape, bool)
    k = int(density * x.size)
    if k <= 0:
        raise SolarError(f"density {density} keeps no element of a tensor of {x.size}")
    flat = np.abs(x).reshape(-1)
    cut = np.partition(flat, x.size - k)[x.size - k]  # the k-th largest magnitude
    keep = flat > cut
    tied = np.flatnonzero(flat == cut)[:k - int(keep.sum())]
    keep[tied] = True
    return keep.reshape(x.shape)


def _rounding(dtype_name: str | None):
    """x -> x rounded to dtype_name and back to float32 (identity for None or float32)."""
    if not dtype_name or dtype_name == "float32":
        return lambda x: x
    dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(dtype_name)
    if dtype is None:
        raise SolarError(f"mergekit numerics in {dtype_name!r}: bfloat16, float16 or float32")
    return lambda x: np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def _tensor_rng(seed: int, model: int, tensor_name: str) -> np.random.Generator:
    # One stream per (seed, model, tensor): the same masks in memory and when streaming.
    return np.random.default_rng([seed, model, zlib.crc32(tensor_name.encode())])


def task_arithmetic(base: np.ndarray, xs: Sequence[np.ndarray], weights: Sequence[np.ndarray],
                    densities: Sequence[np.ndarray], *, consensus: str | None, sparsify: str | None,
                    normalize: bool, rescale: bool, tensor_names: Sequence[str], models: Sequence[int],
                    seed: int = 0, mergekit_dtype: str | None = None) -> np.ndarray:
    """mergekit's generalized task arithmetic (task_arithmetic, ties, dare_ties, dare_linear).

    deltas d_i = x_i - base; sparsified per layer slice (magnitude top-k or Bernoulli keep,
    DARE rescales kept values by 1/density); weighted by w_i; with sign consensus only the
    deltas agreeing with sign(sum_i w_i d_i) count, and normalisation divides by the sum of
    the weights that count. Result: base + mixed delta.

    mergekit_dtype ("bfloat16", ...): mergekit's numerics instead (the module's docstring):
    each step rounded to that dtype as mergekit's torch code computes in it (sums accumulate
    in float32, as torch's CPU reductions of bf16 do), DARE's kept values rescaled to the
    task vector's L1 norm.
    """
    r = _rounding(mergekit_dtype)
    deltas = []
    for x, density, model in zip(xs, densities, models):
        d = r(x - base)
        if sparsify is not None:
            for layer in range(d.shape[0]):
                rho = float(density[layer])
                if rho >= 1:
                    continue
                if sparsify == "magnitude":
                    d[layer] *= magnitude_mask(d[layer], rho)
                else:
                    keep = _tensor_rng(seed, model, tensor_names[layer]).random(d[layer].shape) < rho
                    before = np.abs(d[layer]).sum(dtype=np.float64)
                    d[layer] *= keep
                    if rescale and mergekit_dtype:  # to the unsparsified L1 norm (mergekit's RescaleNorm.l1)
                        after = np.abs(d[layer]).sum(dtype=np.float64)
                        if r(before) >= 1e-7 and r(after) >= 1e-7:
                            d[layer] = r(d[layer] * r(r(before) / r(after)))
                    elif rescale:
                        d[layer] /= np.float32(rho)
        deltas.append(d)
    weighted = np.stack([r(d * r(_bcast(w, d))) for d, w in zip(deltas, weights)])  # [K, L, ...]
    w = np.stack([r(_bcast(w, base)) for w in weights])  # [K, L, 1, ...]
    if consensus == "sum":
        majority = np.where(r(weighted.sum(axis=0)) >= 0, 1.0, -1.0).astype(np.float32)
        mask = np.sign(weighted) == majority
        mixed = r((weighted * mask).sum(axis=0))
        divisor = r((w * mask).sum(axis=0))
        divisor[divisor == 0] = 1
    else:
        mixed = r(weighted.sum(axis=0))
        divisor = np.broadcast_to(r(w.sum(axis=0)), mixed.shape).copy()
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = r(mixed / divisor)
    return r(base + mixed)
