"""Log-likelihood requests/s: solar_jax against lm-eval's `hf` model.

The same requests on the real model, batched, each side in its own process, float32, this
machine, in back-to-back pairs (this machine's speed drifts over minutes), with a ratio per
pair. Requests (one file both sides read), from the synthetic math set:
  choices   multiple choice: each question with its true and three wrong answers, so four
            requests share a context (solar_jax runs it once; target >= 2x the peer)
  distinct  each question once, with its true answer: nothing shared (target >= 1x)
Also checks that the two sides' log-likelihoods agree.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

from solar_jax.bench.common import gib, median, run_worker
from solar_jax.errors import SolarError
from solar_jax.data import synth_math
from solar_jax.weights.real_model import ensure_real_model


KINDS = {"choices": 2.0, "distinct": 1.0}  # request kind -> target ratio


def requests(questions: int, kind: str = "choices") -> list[tuple[str, str]]:
    """`questions` x 4 requests, both kinds (the same count, so the rates compare)."""
    _, held = synth_math.generate(10, questions * (4 if kind == "distinct" else 1), seed=7)
    out = []
    for p in held:
        answer = int(p["answer"])
        candidates = (answer,) if kind == "distinct" else (answer, answer + 1, answer * 2 + 3, max(answer - 7, 0))
        for candidate in candidates:
            out.append((f"Question: {p['question']}\nAnswer:", f" #### {candidate}"))
    return out


def main(c: ml_collections.ConfigDict) -> None:
    if c.requests not in KINDS:
        raise SolarError(f"unknown request kind {c.requests!r} for the eval benchmark; known: {', '.join(KINDS)}")
    model_dir = str(ensure_real_model())
    reqs = requests(c.questions, c.requests)
    runs: dict[str, list] = {"solar_jax": [], "lm-eval hf": []}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        requests_file = Path(scratch) / "requests.json"
        requests_file.write_text(json.dumps(reqs))
        job = dict(model_dir=model_dir, requests_file=str(requests_file), batch_size=c.batch_size)
        for _ in range(c.pairs):
            runs["solar_jax"].append(run_worker("solar_jax", "eval", job))
            runs["lm-eval hf"].append(run_worker("peer", "eval", job))
    print(f"log-likelihood of {len(reqs)} requests ({c.requests}) on SmolLM2-135M, batch {c.batch_size}, float32, "
          f"CPU, {c.pairs} back-to-back pairs (medians)")
    for side, r in runs.items():
        print(f"{side:12s}{median(r, 'requests_per_second'):10.1f} req/s{median(r, 'seconds'):9.2f} s"
              f"{gib(median(r, 'peak_rss')):>11s}")
    ratios = [j["requests_per_second"] / p["requests_per_second"] for j, p in zip(runs["solar_jax"], runs["lm-eval hf"])]
    diff = np.max(np.abs(np.asarray(runs["solar_jax"][0]["lls"]) - np.asarray(runs["lm-eval hf"][0]["lls"])))
    target = KINDS[c.requests]
    print(f"ratio solar_jax/lm-eval hf per pair: {', '.join(f'{x:.2f}x' for x in ratios)} (target: >= {target:.0f}x: "
          f"{'MET' if min(ratios) >= target else 'MISSED'}); max |log-likelihood difference| {diff:.2e}")
