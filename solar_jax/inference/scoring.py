"""Log-probs of continuations under a model, by packed batches: the engine behind
evaluation (lm-eval requests, stage scoring, contamination checks) and DPO's precomputed
reference. Requests that share a context run it once, shared continuation prefixes run
once, and the vocab projection runs only where a token is scored (packing.py lays out the
rows; this module places params and batches and runs the jitted pass)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.inference import packing
from solar_jax.parallel import sharding
from solar_jax.inference.log_probs import token_log_probs


def _score_columns(graphdef, state, tokens, positions, items, reach, columns, targets):
    """Packed rows [B, W] -> log p and is-argmax [B, P] of the targets at the scored columns.
    The vocab projection and log-softmax run only there ([B, P, V], not [B, W, V])."""
    model = nnx.merge(graphdef, state)
    mask = model_lib.tree_attention_mask(items, reach, positions, model.config.sliding_window)
    x, _, _ = model.trunk(tokens, positions, items, mask=mask)
    logits = model.unembed(jnp.take_along_axis(x, columns[..., None], axis=1))
    return token_log_probs(logits, targets), jnp.argmax(logits, axis=-1) == targets


class PackedScorer:
    def __init__(self, model: model_lib.Transformer, batch_size: int, max_len: int, mesh=None):
        """batch_size: rows per forward pass (each row packs several requests); max_len:
        the longest row, and the harness's truncation length. mesh: a (data, fsdp, tensor)
        mesh as in training; params are placed by the same rules and each batch is split
        over data x fsdp (batch_size must divide)."""
        self.batch_size, self.max_len, self.mesh = batch_size, max_len, mesh
        self._graphdef, self._state = nnx.split(model)
        if mesh is not None:
            if batch_size % sharding.data_parallel_size(mesh):
                raise SolarError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                                 f"{sharding.data_parallel_size(mesh)}")
            flat = model_lib.flat_params(model_lib.param_dict(model))
            shapes = {k: v.shape for k, v in flat.items()}
            shardings = sharding.param_shardings(shapes, mesh)
            # The module rebuilt to place activations and layer weights on the mesh as in training.
            placed = model_lib.abstract_model(model.config, **{**model.options,
                                                               "placement": sharding.model_placement(shapes, mesh)})
            self._graphdef, _ = nnx.split(placed)
            self._state = model_lib.unflatten_params({k: jax.device_put(v, shardings[k]) for k, v in flat.items()})
        # Outputs replicated: every process reads all of them (multi-host meshes too).
        self._fn = jax.jit(_score_columns, static_argnames=("graphdef",),
                           out_shardings=None if mesh is None else sharding.replicated(mesh))

    def mesh_context(self):
        """The mesh for tracing (activations batch-sharded, as in training), if any."""
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _put(self, **arrays):
        if self.mesh is None:
            return {k: jnp.asarray(a) for k, a in arrays.items()}
        return sharding.put_global_batch(arrays, self.mesh)  # the same rows on every process

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(context ids (non-empty), continuation ids) -> per request, log p of each
        continuation token [n] and whether it is the argmax [n], after the harness's
        truncation to the last max_len + 1 tokens (n = min(len(continuation), max_len))."""
        lps = [np.zeros(min(len(x), self.max_len), np.float32) for _, x in pairs]
        greedy = [np.ones(len(lp), bool) for lp in lps]
        for b in packing.batches(packing.make_items(pairs, self.max_len), self.batch_size, self.max_len):
            with self.mesh_context():
                lp, ok = self._fn(self._graphdef, self._state, **self._put(
                    tokens=b.tokens, positions=b.positions, items=b.items, reach=b.reach, columns=b.columns,
                    targets=b.targets))
            lp, ok = np.asarray(lp), np.asarray(ok)
            for owner, row, at in b.requests:
                lps[owner], greedy[owner] = lp[row, at], ok[row, at]
        return lps, greedy
