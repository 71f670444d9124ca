"""solar_jax's benchmark workers: `python -m solar_jax.bench.worker JOB 'JSON'`, each in its
own process so its time and peak memory are its own (the peers' side is peers.py)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from solar_jax.bench.dpo import dpo_config
from solar_jax.bench.measure import Timer, current_rss_bytes, peak_rss_bytes, report
from solar_jax.cli import apply_default_xla_flags
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.metrics import read_metrics
from solar_jax.training.optim import make_optimizer
from solar_jax.training.step import make_train_step
from solar_jax.weights import hf


def convert(model_dir: str, output_dir: str) -> None:
    """load_hf_params + save_hf_params (streamed, float32 params in memory)."""
    baseline = current_rss_bytes()  # after imports: the work is what is measured
    with Timer() as t:
        config = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
        params = hf.load_hf_params(model_dir, config)
        hf.save_hf_params(params, config, output_dir, source_dir=model_dir)
    report(dict(seconds=t.seconds, peak_rss=peak_rss_bytes(), baseline_rss=baseline))


def train(model_dir: str, batch_file: str, steps: int, warmup: int, hparams: dict, remat: str) -> None:
    """The jitted train step the train command runs (AdamW, global-norm clipping), float32."""
    config = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    params = hf.load_hf_params(model_dir, config)
    c = ml_collections.ConfigDict(dict(learning_rate=hparams["lr"], end_lr_ratio=1.0, schedule="constant",
                                       warmup_steps=0, num_steps=steps + warmup, weight_decay=hparams["weight_decay"],
                                       decay_embeddings=True, adam_b1=hparams["b1"], adam_b2=hparams["b2"],
                                       adam_eps=hparams["eps"], grad_clip=hparams["clip"]))
    tx = make_optimizer(c, params)
    graphdef, _ = nnx.split(model_lib.abstract_model(config, remat=remat))
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    batch = np.load(batch_file)
    x, y = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    b = dict(inputs=x, targets=y, segment_ids=jnp.ones_like(x), loss_mask=jnp.ones(x.shape, jnp.float32))
    step = jax.jit(make_train_step(graphdef, tx, 1), donate_argnums=0)
    times, losses = [], []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = step(state, b)
        losses.append(float(m["loss"]))
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times[warmup:])
    report(dict(step_seconds=step_seconds, tokens_per_second=x.size / step_seconds, peak_rss=peak_rss_bytes(),
                first_loss=losses[0]))


def loglikelihood(model_dir: str, requests_file: str, batch_size: int) -> None:
    """The evaluate command's log-likelihood engine on (context, continuation) requests."""
    reqs = [tuple(r) for r in json.loads(Path(requests_file).read_text())]
    model, tok = load_for_eval(model_dir)
    lm = LanguageModel(model, tok, batch_size=batch_size, max_len=512)
    lm.loglikelihood(reqs[:batch_size])  # compiles outside the timing, as the peer loads outside it
    with Timer() as t:
        lls = [ll for ll, _ in lm.loglikelihood(reqs)]
    report(dict(requests_per_second=len(reqs) / t.seconds, seconds=t.seconds, peak_rss=peak_rss_bytes(),
                lls=[float(x) for x in np.asarray(lls)]))


def dpo(reference: str, model: str, steps: int, batch_size: int, seq_len: int, workdir: str) -> None:
    """The train command's loop on configs/dpo.py; pairs/s from its metrics."""
    c = dpo_config(reference, model, steps, batch_size, seq_len)
    with Timer() as t:
        train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    rows = [r for r in read_metrics(Path(workdir) / "metrics.jsonl") if r.get("pairs_per_second")]
    steady = rows[2:] or rows  # the first steps hold the compile
    report(dict(pairs_per_second=statistics.median(r["pairs_per_second"] for r in steady), peak_rss=peak_rss_bytes(),
                total_seconds=t.seconds, step_seconds=statistics.median(r["step_seconds"] for r in steady)))


JOBS = dict(convert=convert, train=train, eval=loglikelihood, dpo=dpo)

if __name__ == "__main__":
    apply_default_xla_flags()  # as the commands do, before the backend starts
    JOBS[sys.argv[1]](**json.loads(sys.argv[2]))
