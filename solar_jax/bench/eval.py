"""Log-likelihood requests/s: solar_jax against lm-eval's `hf` model.

The same requests (multiple-choice continuations built from the synthetic math set: each
question with its true and three wrong answers, one file both sides read) on the real
model, batched, each side in its own process, float32, this machine. Also checks that the
two sides' log-likelihoods agree.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

from solar_jax.bench.common import gib, run_worker
from solar_jax.training import synth_math
from solar_jax.weights.real_model import ensure_real_model


def requests(questions: int) -> list[tuple[str, str]]:
    _, held = synth_math.generate(10, questions, seed=7)
    out = []
    for p in held:
        answer = int(p["answer"])
        for candidate in (answer, answer + 1, answer * 2 + 3, max(answer - 7, 0)):
            out.append((f"Question: {p['question']}\nAnswer:", f" #### {candidate}"))
    return out


def main(c: ml_collections.ConfigDict) -> None:
    model_dir = str(ensure_real_model())
    reqs = requests(c.questions)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        requests_file = Path(scratch) / "requests.json"
        requests_file.write_text(json.dumps(reqs))
        job = dict(model_dir=model_dir, requests_file=str(requests_file), batch_size=c.batch_size)
        res = {"solar_jax": run_worker("solar_jax", "eval", job), "lm-eval hf": run_worker("peer", "eval", job)}
    print(f"log-likelihood of {len(reqs)} requests on SmolLM2-135M, batch {c.batch_size}, float32, CPU")
    for side, r in res.items():
        print(f"{side:12s}{r['requests_per_second']:10.1f} req/s{r['seconds']:9.2f} s{gib(r['peak_rss']):>11s}")
    diff = np.max(np.abs(np.asarray(res["solar_jax"]["lls"]) - np.asarray(res["lm-eval hf"]["lls"])))
    ratio = res["solar_jax"]["requests_per_second"] / res["lm-eval hf"]["requests_per_second"]
    print(f"ratio solar_jax/lm-eval hf: {ratio:.2f}x; max |log-likelihood difference| {diff:.2e}")
