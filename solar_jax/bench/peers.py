"""The peers' benchmark workers, run as a script: `python peers.py JOB 'JSON'`.

It never imports solar_jax (whose package import loads jax and the model code), so a peer's
time and peak memory are its own. Inputs the two sides must share (a batch, requests) come
from files the benchmark wrote; measure.py is imported as this script's sibling.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from measure import Timer, current_rss_bytes, peak_rss_bytes, report


def convert(model_dir: str, output_dir: str) -> None:
    """transformers: from_pretrained + save_pretrained, float32."""
    import torch
    import transformers

    baseline = current_rss_bytes()  # after imports: the work is what is measured
    with Timer() as t:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.save_pretrained(output_dir)
    report(dict(seconds=t.seconds, peak_rss=peak_rss_bytes(), baseline_rss=baseline))


def train(model_dir: str, batch_file: str, steps: int, warmup: int, hparams: dict) -> None:
    """A transformers model's train step with torch AdamW and global-norm clipping."""
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=hparams["lr"], betas=(hparams["b1"], hparams["b2"]),
                            eps=hparams["eps"], weight_decay=hparams["weight_decay"])
    batch = np.load(batch_file)
    x, y = torch.from_numpy(batch["inputs"]).long(), torch.from_numpy(batch["targets"]).long()
    times, losses = [], []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hparams["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times[warmup:])  # as solar_jax's worker computes it
    report(dict(step_seconds=step_seconds, tokens_per_second=x.numel() / step_seconds, peak_rss=peak_rss_bytes(),
                first_loss=losses[0]))


def loglikelihood(model_dir: str, requests_file: str, batch_size: int) -> None:
    """lm-eval's `hf` model on (context, continuation) requests, float32 on CPU."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    with open(requests_file) as f:
        reqs = [tuple(r) for r in json.load(f)]
    lm = HFLM(pretrained=model_dir, batch_size=batch_size, dtype="float32", device="cpu")
    lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs[:batch_size])])  # warm-up
    with Timer() as t:
        lls = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)])]
    report(dict(requests_per_second=len(reqs) / t.seconds, seconds=t.seconds, peak_rss=peak_rss_bytes(),
                lls=[float(x) for x in lls]))


JOBS = dict(convert=convert, train=train, eval=loglikelihood)

if __name__ == "__main__":
    JOBS[sys.argv[1]](**json.loads(sys.argv[2]))
