"""Batched, jitted language-model queries with lm-evaluation-harness semantics.

loglikelihood((context, continuation)) -> (sum log p(continuation | context), is_greedy)
loglikelihood_rolling(text) -> sum log p(text) (windows of max_len, the first from the prefix token)
generate_until(context, stop sequences, max tokens) -> text
Context and continuation are encoded as the harness does: trailing spaces of the context
move to the continuation, the continuation's tokens are those of the whole string past
the context's own tokens. Scoring requests go to the packed engine (inference/scoring.py):
requests that share a context (the choices of a question) run it once, shared prefixes of
continuations run once, and the vocab projection runs only where a token is scored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from solar_jax.inference.generate import generate
from solar_jax.models.transformer import Transformer
from solar_jax.inference import packing
from solar_jax.inference.scoring import PackedScorer


class LanguageModel:
    def __init__(self, model: Transformer, tokenizer, batch_size: int = 8, max_len: int | None = None, mesh=None):
        """batch_size: rows per forward pass (a row packs several scoring requests; one
        generation request). mesh: a (data, fsdp, tensor) mesh as in training; params are
        placed by the same rules and each batch is split over data x fsdp (batch_size must
        divide)."""
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_len = max_len or min(model.config.max_position_embeddings, 2048)
        self.scorer = PackedScorer(model, batch_size, self.max_len, mesh)

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

    @property
    def prefix_id(self) -> int:
        """What an empty context scores from: the harness's prefix token, BOS if the
        tokenizer has one, else EOS."""
        bos = getattr(self.tokenizer, "bos_id", None)
        return self.tokenizer.eos_id if bos is None else bos

    def _context_prefix(self, ids: list[int]) -> list[int]:
        return ids if ids else [self.prefix_id]

    # ---- scoring ----
    def _score_packed(self, pairs: Sequence[tuple[list[int], list[int]]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per request: log p of each continuation token and whether it is the argmax."""
        return self.scorer.score([(self._context_prefix(list(c)), list(x)) for c, x in pairs])

    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (log p(continuation), greedy)."""
        lps, greedy = self._score_packed(pairs)
        return [(float(np.sum(lp, dtype=np.float64)), bool(np.all(g))) for lp, g in zip(lps, greedy)]

    def token_logprobs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """log p of each token of each text (the first conditioned on the prefix token), max_len tokens."""
        pairs = [([self.prefix_id], self.encode(t)[: self.max_len]) for t in texts]
        return self._score_packed(pairs)[0]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Sum of log p over every token of each text, by the harness's rolling windows
        (context length 1, made disjoint): see `rolling_windows`."""
        pairs, owner = [], []
        for k, text in enumerate(texts):
            for window in rolling_windows(self.encode(text), self.max_len):
                pairs.append(window)
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
            ids = self.encode(context)[-(self.max_len - max_tokens):] or [self.prefix_id]
            encoded.append(ids)
        order = sorted(range(len(requests)), key=lambda i: (requests[i][2], len(encoded[i])))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            max_tokens = max(requests[i][2] for i in idx)
            width = packing.bucket(max(len(encoded[i]) for i in idx), self.max_len - max_tokens)
            with self.scorer.mesh_context():
                tokens = generate(self.model, [encoded[i] for i in idx], max_tokens,
                                  eos_token_id=self.tokenizer.eos_id, pad_to=width)
            for i, toks in zip(idx, tokens):
                text = self.tokenizer.decode([t for t in toks if t != self.tokenizer.eos_id])
                out[i] = cut_at_stops(text, requests[i][1])
        return out  # type: ignore[return-value]


def rolling_windows(ids: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows that score every token once, as lm-evaluation-harness's
    get_rolling_token_windows(context_len=1) + make_disjoint_window: the first window scores
    up to max_len tokens from the prefix token (an empty context here); each later one scores
    the next max_len tokens, or what is left, with the tokens before them that fill its
    max_len inputs as context (one token for a full window, more for the last).
    ids: [N] -> windows; no window for an empty text."""
    if not ids:
        return []
    first = min(max_len, len(ids))
    windows = [([], ids[:first])]
    predicted = first
    while predicted < len(ids):
        n = min(len(ids) - predicted, max_len)
        end = predicted + n
        inputs = ids[end - max_len - 1:end - 1]  # end > max_len here, so the start is >= 0
        windows.append((inputs[:len(inputs) - (n - 1)], ids[end - n:end]))
        predicted += n
    return windows


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        if s and s in text:
            cut = min(cut, text.index(s))
    return text[:cut]
