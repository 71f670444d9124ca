"""Batched, jitted language-model queries with lm-evaluation-harness semantics.

loglikelihood((context, continuation)) -> (sum log p(continuation | context), is_greedy)
loglikelihood_rolling(text) -> sum log p(text) (windows of max_len, the first from EOS)
generate_until(context, stop sequences, max tokens) -> text
Context and continuation are encoded as the harness does: trailing spaces of the context
move to the continuation, the continuation's tokens are those of the whole string past
the context's own tokens. Requests are sorted by length and padded to a few bucket
lengths, so only a handful of shapes compile.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from solar_jax.models.generate import generate
from solar_jax.training.losses import token_log_probs
from solar_jax.models.transformer import Transformer
from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.training import sharding


def _bucket(n: int, max_len: int) -> int:
    size = 32
    while size < n:
        size *= 2
    return min(size, max_len)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score(graphdef, state, inputs, targets, segments, mask):
    """Per row: sum of log p over masked targets, and whether every masked target is the argmax."""
    logits = nnx.merge(graphdef, state)(inputs, None, segments)
    lp = token_log_probs(logits, targets)
    greedy = (jnp.argmax(logits, axis=-1) == targets) | (mask == 0)
    return jnp.sum(lp * mask, axis=-1), jnp.all(greedy, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_lps(graphdef, state, inputs, targets, segments):
    return token_log_probs(nnx.merge(graphdef, state)(inputs, None, segments), targets)


class LanguageModel:
    def __init__(self, model: Transformer, tokenizer, batch_size: int = 8, max_len: int | None = None, mesh=None):
        """mesh: a (data, fsdp, tensor) mesh as in training; params are placed by the same
        rules and each batch is split over data x fsdp (batch_size must divide)."""
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_len = max_len or min(model.config.max_position_embeddings, 2048)
        self._graphdef, self._state = nnx.split(model)
        self._mesh = mesh
        if mesh is not None:

            if batch_size % sharding.data_parallel_size(mesh):

                raise SolarError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                                 f"{sharding.data_parallel_size(mesh)}")
            flat = model_lib.flat_params(model_lib.param_dict(model))
            shardings = sharding.param_shardings({k: v.shape for k, v in flat.items()}, mesh)
            self._state = model_lib.unflatten_params({k: jax.device_put(v, shardings[k]) for k, v in flat.items()})
            self._batch_sharding = sharding.batch_sharding(mesh)

    def _mesh_context(self):
        """The mesh for tracing (activations batch-sharded, as in training), if any."""
        return jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()

    def _put(self, *arrays):
        if self._mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        return tuple(jax.device_put(a, self._batch_sharding) for a in arrays)

    # ---- encoding, as the harness does ----
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text], add_special_tokens=False)[0]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

    def _context_prefix(self, ids: list[int]) -> list[int]:
        """An empty context scores from the EOS token (the harness's prefix token)."""
        return ids if ids else [self.tokenizer.eos_id]

    # ---- scoring ----
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (log p(continuation), greedy), batched by length."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = []
            for i in idx:
                ctx, cont = self._context_prefix(list(pairs[i][0])), list(pairs[i][1])
                seq = (ctx + cont)[-(self.max_len + 1):]
                n_cont = min(len(cont), len(seq) - 1)
                rows.append((seq, n_cont))
            width = _bucket(max(len(s) - 1 for s, _ in rows), self.max_len)
            shape = (self.batch_size, width)
            inputs, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
            segments, mask = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
            for r, (seq, n_cont) in enumerate(rows):
                n = len(seq) - 1
                inputs[r, :n], targets[r, :n], segments[r, :n] = seq[:-1], seq[1:], 1
                mask[r, n - n_cont:n] = 1
            with self._mesh_context():
                lp, greedy = _score(self._graphdef, self._state, *self._put(inputs, targets, segments, mask))
            lp, greedy = np.asarray(lp), np.asarray(greedy)
            for r, i in enumerate(idx):
                out[i] = (float(lp[r]), bool(greedy[r]))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])

    def token_logprobs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """log p of each token of each text (the first conditioned on EOS), max_len tokens."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            seqs = [([self.tokenizer.eos_id] + self.encode(t))[: self.max_len + 1] for t in chunk]
            width = _bucket(max(len(s) - 1 for s in seqs), self.max_len)
            inputs, targets = np.zeros((self.batch_size, width), np.int32), np.zeros((self.batch_size, width), np.int32)
            segments = np.zeros((self.batch_size, width), np.int32)
            for r, seq in enumerate(seqs):
                n = len(seq) - 1
                inputs[r, :n], targets[r, :n], segments[r, :n] = seq[:-1], seq[1:], 1
            lp = np.asarray(_token_lps(self._graphdef, self._state, *self._put(inputs, targets, segments)))
            out += [lp[r, : len(seq) - 1] for r, seq in enumerate(seqs)]
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Sum of log p over every token of each text, in disjoint windows of max_len tokens,
        each conditioned on the one token before it (EOS for the first), as the harness's
        rolling windows with context length 1."""
        pairs, owner = [], []
        for k, text in enumerate(texts):
            ids = self.encode(text)
            for start in range(0, len(ids), self.max_len):
                pairs.append((ids[start - 1:start] if start else [], ids[start:start + self.max_len]))
                owner.append(k)
        totals = [0.0] * len(texts)
        for k, (lp, _) in zip(owner, self.score_tokens(pairs)):
            totals[k] += lp
        return totals

    def generate_until(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[str]:
        """Greedy continuation of each context, cut at the first stop sequence. Requests are
        decoded in batches (left-padded to a bucket length: few compiles)."""
        out: list[str | None] = [None] * len(requests)
        encoded = []
        for context, stops, max_tokens in requests:
            ids = self.encode(context)[-(self.max_len - max_tokens):] or [self.tokenizer.eos_id]
            encoded.append(ids)
        order = sorted(range(len(requests)), key=lambda i: (requests[i][2], len(encoded[i])))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            max_tokens = max(requests[i][2] for i in idx)
            width = _bucket(max(len(encoded[i]) for i in idx), self.max_len - max_tokens)
            with self._mesh_context():
                tokens = generate(self.model, [encoded[i] for i in idx], max_tokens,
                                  eos_token_id=self.tokenizer.eos_id, pad_to=width)
            for i, toks in zip(idx, tokens):
                text = self.tokenizer.decode([t for t in toks if t != self.tokenizer.eos_id])
                out[i] = cut_at_stops(text, requests[i][1])
        return out  # type: ignore[return-value]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        if s and s in text:
            cut = min(cut, text.index(s))
    return text[:cut]
