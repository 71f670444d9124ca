"""Seam diagnostics: where the residual stream of a model can be cut and stacked again.

Depth up-scaling stacks [0, a) of one copy on [b, n) of another (SOLAR: a = n - m, b = m).
The second copy's layer b was trained on the residual stream entering layer b, h_b; after
the seam it receives h_a. How far apart those are is measured on real text:

  cos(i, j)    the mean over tokens of the cosine between h_i and h_j, normalised by the
               mean self-cosines, so that rounding cannot make cos(i, i) differ from 1;
               h_i [B, T, D] is the residual stream entering layer i (h_0 the embeddings,
               h_n the last layer's output before the final norm).
  distance     d(i, j) = arccos(cos(i, j)) / pi, in [0, 1]: symmetric, zero on the
               diagonal (the angular distance of Gromov et al., "The Unreasonable
               Ineffectiveness of the Deeper Layers", averaged over every token).
  layer change 1 - cos(i, i + 1): how much layer i rotates the stream (0: an identity).
  seam mismatch for SOLAR's m: d(n - m, m); for any seam (a, b): d(a, b).

For a target depth s (n < s <= 2n) every seam [0, a) + [b, n) with a - b = s - n gives s
layers; `recommend` picks the one with the smallest mismatch and compares SOLAR's
symmetric seam (a = n - m, b = m) when s is even.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from solar_jax.errors import SolarError


def gram_fn(graphdef):
    """jit(params, inputs [B, T], segment_ids [B, T]) -> (sum over real tokens of
    cos(h_i, h_j) as [L+1, L+1] float32, number of real tokens). Padding (segment 0) is
    left out."""

    @jax.jit
    def gram(params, inputs, segment_ids):
        model = nnx.merge(graphdef, params)
        _, _, hidden = model.trunk(inputs, segment_ids=segment_ids, return_hidden=True)  # [L+1, B, T, D]
        h = hidden.astype(jnp.float32)
        unit = h * jax.lax.rsqrt(jnp.sum(h * h, axis=-1, keepdims=True) + 1e-30)
        weight = (segment_ids > 0).astype(jnp.float32)
        cos_sum = jnp.einsum("ibtd,jbtd->ij", unit * weight[None, :, :, None], unit,
                             precision=jax.lax.Precision.HIGHEST)
        return cos_sum, weight.sum()

    return gram


def mean_cosines(model, batches: Iterable[dict[str, np.ndarray]]) -> tuple[np.ndarray, int]:
    """The model's residual streams over the batches (inputs, segment_ids) -> (cos [L+1,
    L+1] float64, symmetric with a unit diagonal, tokens counted)."""
    graphdef, params = nnx.split(model)
    gram = gram_fn(graphdef)
    total, tokens = None, 0.0
    for batch in batches:
        g, n = gram(params, jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]))
        g = np.asarray(g, np.float64)
        total = g if total is None else total + g
        tokens += float(n)
    if total is None or tokens == 0:
        raise SolarError("no tokens to run the model on (the corpus is empty)")
    total = (total + total.T) / 2
    diag = np.sqrt(np.diag(total))
    cos = total / np.outer(diag, diag)
    np.fill_diagonal(cos, 1.0)
    return np.clip(cos, -1.0, 1.0), int(tokens)


def angular_distance(cos: np.ndarray) -> np.ndarray:
    """arccos(cos) / pi: [L+1, L+1] in [0, 1]."""
    return np.arccos(np.clip(cos, -1.0, 1.0)) / math.pi


def layer_change(cos: np.ndarray) -> np.ndarray:
    """1 - cos(h_i, h_{i+1}) for each of the L layers."""
    return 1.0 - np.diagonal(cos, offset=1)


def seam_mismatch(distance: np.ndarray) -> dict[int, float]:
    """SOLAR's seam for every m that up-scales (2(n - m) > n): m -> d(n - m, m)."""
    n = distance.shape[0] - 1
    return {m: float(distance[n - m, m]) for m in range(0, (n + 1) // 2)}


def target_depth(n: int, target_layers: int, m: int) -> int:
    """The depth asked for: target_layers if > 0, else SOLAR's 2(n - m) for m >= 0, else
    SOLAR's proportion (m = n / 4, rounded: 8 of 32)."""
    if target_layers > 0:
        if not n < target_layers <= 2 * n:
            raise SolarError(f"target_layers {target_layers} cannot be reached by stacking two slices of a "
                             f"{n}-layer model: need {n} < target_layers <= {2 * n}")
        return target_layers
    if m >= 0:
        if not 0 <= m < (n + 1) // 2:
            raise SolarError(f"m must satisfy 0 <= m < n / 2 for the up-scaled model to be deeper than "
                             f"the base (n = {n} layers), got m = {m}")
        return 2 * (n - m)
    return 2 * (n - max(1, round(n / 4)))


@dataclasses.dataclass
class Recommendation:
    target_layers: int
    a: int  # the first copy is layers [0, a)
    b: int  # the second copy is layers [b, n)
    slices: str  # "0:a,b:n", as the up-scale command and training's upscale_slices take it
    mismatch: float  # d(a, b)
    solar_m: int | None  # SOLAR's m for this depth (None when the depth is odd)
    solar_mismatch: float | None
    reason: str  # one line


def recommend(distance: np.ndarray, target_layers: int) -> Recommendation:
    """The seam [0, a) + [b, n) with a - b = target_layers - n and the smallest d(a, b);
    ties go to the seam closest to SOLAR's symmetric one."""
    n = distance.shape[0] - 1
    overlap = target_layers - n
    if not 0 < overlap <= n:
        raise SolarError(f"target_layers {target_layers} cannot be reached by stacking two slices of a "
                         f"{n}-layer model: need {n} < target_layers <= {2 * n}")
    solar_m = n - target_layers // 2 if target_layers % 2 == 0 else None
    candidates = [(b + overlap, b) for b in range(0, n - overlap + 1)]
    centre = (n - overlap) / 2
    a, b = min(candidates, key=lambda ab: (round(float(distance[ab]), 12), abs(ab[1] - centre)))
    mismatch = float(distance[a, b])
    solar_mismatch = float(distance[n - solar_m, solar_m]) if solar_m is not None else None
    slices = f"0:{a},{b}:{n}"
    if solar_m is not None and (a, b) == (n - solar_m, solar_m):
        reason = (f"SOLAR's seam m = {solar_m} (slices {slices}) already has the smallest mismatch "
                  f"({mismatch:.3f}) of the {len(candidates)} seams giving {target_layers} layers")
    else:
        versus = (f", against {solar_mismatch:.3f} for SOLAR's m = {solar_m} (0:{n - solar_m},{solar_m}:{n})"
                  if solar_m is not None else "")
        reason = (f"slices {slices}: layer {b} of the second copy receives a residual stream at angular "
                  f"distance {mismatch:.3f} from the one it was trained on{versus}; smallest of the "
                  f"{len(candidates)} seams giving {target_layers} layers")
    return Recommendation(target_layers, a, b, slices, mismatch, solar_m, solar_mismatch, reason)
