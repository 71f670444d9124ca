"""Contamination checks between training data and benchmark files.

- 13-gram overlap, normalised as the harness's decontamination does (lowercase, punctuation
  removed, whitespace collapsed, word n-grams): a benchmark item is flagged when any of its
  n-grams occurs in the training text.
- Neighbourhood test (reported on SOLAR's model card; Mattern et al.): per item, the
  fraction of perturbed neighbours whose loss is lower than the original's. A memorised
  item scores near 0; we report the fraction of items scoring < 0.1. Neighbours here are
  word-level perturbations (a word dropped or two adjacent words swapped), seeded.
- Min-K% Prob (Shi et al.): the mean log-probability of the k% least likely tokens of an
  item; higher means more likely seen in training.

  python -m solar_jax.contamination --config.train_files='data/*.jsonl' \
      --config.benchmark_files=benchmarks/gsm8k.jsonl [--config.model_dir=HF_DIR]
"""

from __future__ import annotations

import random
import string
from typing import Any, Iterable, Sequence

import numpy as np

from solar_jax.data.text import expand_files
from solar_jax.data.text import jsonl_rows
from solar_jax.data.text import read_documents

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_words(text: str) -> list[str]:
    return text.lower().translate(_PUNCT).split()


def ngrams(words: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def row_text(row: Any) -> str:
    """Every string in a benchmark row (question, choices, answer...), joined."""
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return " ".join(row_text(v) for v in row.values())
    if isinstance(row, (list, tuple)):
        return " ".join(row_text(v) for v in row)
    return ""


def read_texts(spec: str, text_field: str = "text") -> list[str]:
    """Training files (.txt/.jsonl/.parquet via the data module) or benchmark .jsonl rows."""
    texts = []
    for path in expand_files(spec):
        if path.suffix == ".jsonl":
            texts += [row_text(row) for _, row in jsonl_rows(path)]
        else:
            texts += read_documents([path], text_field)
    return texts


def ngram_overlap(train_texts: Iterable[str], bench_texts: Sequence[str], n: int = 13) -> dict[str, Any]:
    """Flags benchmark items sharing a normalised word n-gram with the training text."""
    seen = set()
    for text in train_texts:
        seen.update(hash(g) for g in ngrams(normalize_words(text), n))
    flagged = [i for i, text in enumerate(bench_texts) if any(hash(g) in seen for g in ngrams(normalize_words(text), n))]
    return dict(n=n, items=len(bench_texts), flagged=len(flagged), fraction=len(flagged) / max(len(bench_texts), 1),
                flagged_items=flagged[:50])


def neighbours(text: str, count: int, rng: random.Random) -> list[str]:
    words = text.split()
    out = []
    for _ in range(count):
        w = list(words)
        if len(w) > 2 and rng.random() < 0.5:
            del w[rng.randrange(len(w))]
        elif len(w) > 1:
            i = rng.randrange(len(w) - 1)
            w[i], w[i + 1] = w[i + 1], w[i]
        out.append(" ".join(w))
    return out


def neighbourhood_scores(losses: Sequence[float], neighbour_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item: the fraction of neighbours whose loss is lower than the original's."""
    return np.asarray([np.mean(np.asarray(nl) < l) for l, nl in zip(losses, neighbour_losses)])


def min_k_prob(token_logprobs: np.ndarray, k: float = 0.2) -> float:
    """Mean of the lowest k fraction of token log-probs (at least one token)."""
    lp = np.sort(np.asarray(token_logprobs, np.float64))
    return float(lp[: max(1, int(len(lp) * k))].mean())


def model_checks(lm, bench_texts: Sequence[str], num_neighbours: int = 10, k: float = 0.2, seed: int = 0,
                 threshold: float = 0.1) -> dict[str, Any]:
    rng = random.Random(seed)
    lps = lm.token_logprobs(list(bench_texts))
    losses = [-float(np.mean(lp)) for lp in lps]
    neigh = [neighbours(t, num_neighbours, rng) for t in bench_texts]
    flat = [x for ns in neigh for x in ns]
    flat_losses = [-float(np.mean(lp)) for lp in lm.token_logprobs(flat)]
    per_item = [flat_losses[i * num_neighbours:(i + 1) * num_neighbours] for i in range(len(bench_texts))]
    scores = neighbourhood_scores(losses, per_item)
    return dict(neighbourhood_fraction_below=float(np.mean(scores < threshold)), neighbourhood_threshold=threshold,
                neighbourhood_mean_score=float(scores.mean()), min_k_percent=k,
                min_k_prob_mean=float(np.mean([min_k_prob(lp, k) for lp in lps])))
