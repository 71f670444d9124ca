"""python -m solar_jax.bench eval: log-likelihood requests/s, solar_jax vs lm-eval's `hf` model.

The same requests (multiple-choice continuations built from the synthetic math set: each
question with its true and three wrong answers) on the real model, batched, each side in
its own process, float32, this machine. Also checks the two sides' log-likelihoods agree.
"""

from __future__ import annotations

import argparse
import sys
import time

from solar_jax.bench.common import gib, report, run_worker


def _requests(n: int) -> list[tuple[str, str]]:
    from solar_jax.training import synth_math

    _, held = synth_math.generate(10, n, seed=7)
    out = []
    for p in held:
        ans = int(p["answer"])
        for cand in (ans, ans + 1, ans * 2 + 3, max(ans - 7, 0)):
            out.append((f"Question: {p['question']}\nAnswer:", f" #### {cand}"))
    return out


def _worker(side: str, model_dir: str, n: int, batch: int) -> None:
    import numpy as np

    from solar_jax.bench.common import peak_rss_bytes

    reqs = _requests(n)
    if side == "solar_jax":
        from solar_jax.evaluation.tasks import load_for_eval
        from solar_jax.evaluation.lm import LanguageModel

        model, tok = load_for_eval(model_dir)
        lm = LanguageModel(model, tok, batch_size=batch, max_len=512)
        lm.loglikelihood(reqs[:batch])  # compile outside the timing, as the hf side loads outside it
        t = time.perf_counter()
        lls = [ll for ll, _ in lm.loglikelihood(reqs)]
    else:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model_dir, batch_size=batch, dtype="float32", device="cpu")
        lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs[:batch])])
        t = time.perf_counter()
        lls = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)])]
    seconds = time.perf_counter() - t
    report(dict(requests_per_second=len(reqs) / seconds, seconds=seconds, peak_rss=peak_rss_bytes(),
                lls=[float(x) for x in np.asarray(lls)]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m solar_jax.bench eval")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--worker", choices=["solar_jax", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from solar_jax.cli import apply_default_xla_flags

        apply_default_xla_flags()
        return _worker(args.worker, args.model_dir, args.questions, args.batch)
    import numpy as np

    from solar_jax.weights.real_model import ensure_real_model

    model_dir = str(ensure_real_model())
    res = {side: run_worker("solar_jax.bench.eval", ["--worker", side, "--model_dir", model_dir, "--questions",
                                                    str(args.questions), "--batch", str(args.batch)])
           for side in ("solar_jax", "hf")}
    n = args.questions * 4
    print(f"log-likelihood of {n} requests on SmolLM2-135M, batch {args.batch}, float32, CPU")
    for side, r in res.items():
        print(f"{side:10s}{r['requests_per_second']:10.1f} req/s{r['seconds']:9.2f} s{gib(r['peak_rss']):>11s}")
    diff = np.max(np.abs(np.asarray(res["solar_jax"]["lls"]) - np.asarray(res["hf"]["lls"])))
    ratio = res["solar_jax"]["requests_per_second"] / res["hf"]["requests_per_second"]
    print(f"ratio solar_jax/lm-eval hf: {ratio:.2f}x; max |log-likelihood difference| {diff:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
