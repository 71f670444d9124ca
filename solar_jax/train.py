"""python -m solar_jax.train --config=configs/cpt.py[:variant] [--config.key=value ...]

`train_and_evaluate(config, workdir)` reads top to bottom: validate -> model source ->
data -> mesh and shardings -> state (restored or initialised under jit with out_shardings)
-> compiled step with donated state -> loop (log, eval, checkpoint, SIGTERM, NaN guard)
-> export to an HF dir under the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from solar_jax import data as data_lib
from solar_jax import hf, sharding
from solar_jax import model as model_lib
from solar_jax import upscale as upscale_lib
from solar_jax.checkpoint import Checkpointer, abstract_like
from solar_jax.errors import SolarError
from solar_jax.losses import cross_entropy
from solar_jax.metrics import MetricsWriter, device_peak_flops, plot_loss_curve, train_flops_per_token
from solar_jax.model_config import ModelConfig, preset
from solar_jax.optim import global_norm, learning_rate_schedule, make_optimizer
from solar_jax.run_config import validate


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped keeping its last good checkpoint."""


@dataclasses.dataclass
class ModelSource:
    """Where the weights come from and what the trained model looks like."""

    config: ModelConfig  # after up-scaling
    base_config: ModelConfig
    model_dir: str | None  # HF dir (weights, tokenizer files); None for a preset
    slices: list | None  # up-scaling slices, or None


def resolve_model(c) -> ModelSource:
    if c.model_preset:
        base = preset(c.model_preset)
        model_dir = None
    else:
        model_dir = c.model_dir
        if not model_dir:
            from solar_jax.real_model import ensure_real_model

            model_dir = str(ensure_real_model())
        base = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    slices = None
    if c.upscale_slices:
        slices = upscale_lib.parse_slices(c.upscale_slices)
    elif c.upscale_m >= 0:
        slices = upscale_lib.solar_slices(base.num_layers, c.upscale_m)
    config = upscale_lib.check_slices(slices, [base]) if slices else base
    return ModelSource(config, base, model_dir, slices)


def initial_params(source: ModelSource, shardings: dict[str, Any], seed: int) -> dict:
    """Weights from the HF dir (or random for a preset), up-scaled if asked, on the mesh."""
    if source.model_dir is None:
        def init():
            return model_lib.param_dict(model_lib.Transformer(source.base_config, rngs=nnx.Rngs(seed)))

        # Without up-scaling, the random params are created already sharded.
        out_sh = None if source.slices else model_lib.unflatten_params(shardings)
        params = jax.jit(init, out_shardings=out_sh)()
    else:
        params = hf.load_hf_params(source.model_dir, source.base_config,
                                   shardings=None if source.slices else shardings)
    if source.slices:
        params, _ = upscale_lib.passthrough_params([params], [source.base_config], source.slices)
    flat = model_lib.flat_params(params)
    return model_lib.unflatten_params({p: jax.device_put(v, shardings[p]) for p, v in flat.items()})


def make_train_step(graphdef, tx, accum: int):
    """(state, batch) -> (state, metrics). The loss is the token-weighted mean over the whole
    global batch; with accum > 1 the batch is split into accum strided microbatches (each
    device keeps its rows) whose gradients add up to the full-batch gradient."""

    def train_step(state, batch):
        params = state["params"]
        total = jnp.maximum(batch["loss_mask"].sum(), 1.0)

        def micro_loss(p, mb):
            logits = nnx.merge(graphdef, p)(mb["inputs"], None, mb["segment_ids"])
            loss_sum, _ = cross_entropy(logits, mb["targets"], mb["loss_mask"])
            return loss_sum / total

        if accum == 1:
            loss, grads = jax.value_and_grad(micro_loss)(params, batch)
        else:
            # [B, T] -> [accum, B/accum, T], microbatch i = rows i, i+accum, ...
            mbs = jax.tree.map(lambda x: x.reshape((-1, accum) + x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, mb):
                g_acc, l_acc = carry
                l, g = jax.value_and_grad(micro_loss)(params, mb)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), mbs)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = dict(step=state["step"] + 1, params=optax.apply_updates(params, updates),
                         opt_state=opt_state, rng=state["rng"])
        metrics = dict(loss=loss, grad_norm=global_norm(grads), tokens=batch["loss_mask"].sum())
        return new_state, metrics

    return train_step


def make_eval_step(graphdef):
    def eval_step(params, batch):
        logits = nnx.merge(graphdef, params)(batch["inputs"], None, batch["segment_ids"])
        return cross_entropy(logits, batch["targets"], batch["loss_mask"])

    return eval_step


def evaluate(eval_fn, params, batches, mesh) -> float | None:
    """Token-weighted mean cross-entropy over the held-out batches."""
    total, count = 0.0, 0.0
    for b in batches:
        s, n = eval_fn(params, sharding.host_batch_to_global(data_lib.model_batch(b), mesh))
        total, count = total + float(s), count + float(n)
    return total / count if count else None


def model_summary(config: ModelConfig, mesh, c) -> str:
    counts = config.param_counts()
    total = sum(counts.values())
    shard = mesh.shape["fsdp"] * mesh.shape["tensor"]
    state_bytes = 16 * total  # float32 params + grads + Adam mu and nu
    lines = [f"model: {config.model_type}, {config.num_layers} layers, d={config.hidden_size}, "
             f"heads {config.num_heads}/{config.num_kv_heads}, vocab {config.vocab_size}: {total / 1e6:.1f}M params"]
    lines += [f"  {k:14s} {v / 1e6:10.2f}M" for k, v in counts.items()]
    lines.append(f"memory: params+grads+Adam ~ {state_bytes / 2**30:.2f} GiB, ~{state_bytes / shard / 2**30:.2f} GiB "
                 f"per device (sharded {shard}-way); activations depend on remat={c.remat}")
    lines.append(f"mesh: data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} tensor={mesh.shape['tensor']} "
                 f"on {mesh.devices.size} {jax.devices()[0].platform} device(s)")
    return "\n".join(lines)


class _Preemption:
    """SIGTERM (TPU preemption, scheduler stop) -> finish the step, save, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


def train_and_evaluate(c, workdir: str | None = None, devices: list | None = None) -> dict[str, Any]:
    """Runs (or resumes) the training described by config `c` in `workdir`, on `devices`
    (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    workdir = Path(workdir or c.workdir)
    if not str(workdir):
        raise SolarError("workdir is required (--config.workdir=RUN_DIR)")
    validate(c, len(devices))
    source = resolve_model(c)
    validate(c, len(devices), source.config.max_position_embeddings)
    tokenizer = data_lib.load_tokenizer(c.tokenizer, source.model_dir)
    if tokenizer.vocab_size > source.config.vocab_size:
        raise SolarError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab is "
                         f"{source.config.vocab_size}")
    corpus = data_lib.load_corpus(c.data, tokenizer, c.seed)
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, devices)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_run_file(workdir, source, c)
    _say("config:\n" + "\n".join(f"  {line}" for line in c.to_yaml().strip().splitlines()))
    _say(model_summary(source.config, mesh, c))
    _say(f"data: {len(corpus.train)} training documents ({corpus.train_tokens:,} tokens), "
         f"{len(corpus.eval)} held out; batch {c.batch_size} x {c.seq_len} tokens")

    options = dict(dtype=c.dtype, remat=c.remat, attention_impl=c.attention_impl)
    graphdef, _ = nnx.split(model_lib.abstract_model(source.config, **options))
    shapes = hf.param_shapes(source.config)
    flat_sh = sharding.param_shardings(shapes, mesh)
    param_sh = model_lib.unflatten_params(flat_sh)
    abstract_params = model_lib.unflatten_params(
        {p: jax.ShapeDtypeStruct(s, jnp.float32, sharding=flat_sh[p]) for p, s in shapes.items()})
    tx = make_optimizer(c, abstract_params)
    replicated = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    state_sh = dict(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
    abstract_state = dict(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=abstract_params,
                          opt_state=abstract_like(abstract_opt, opt_sh),
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))

    local_batch = c.batch_size // jax.process_count()
    train_ds = data_lib.train_dataset(corpus.train, c.seq_len, local_batch, c.seed, c.data.num_threads, c.data.prefetch)
    train_iter = iter(train_ds)
    eval_set = data_lib.eval_batches(corpus.eval, c.seq_len, local_batch, c.eval_batches)
    ckpt = Checkpointer(workdir / "checkpoints", keep=c.keep_checkpoints, async_save=c.async_checkpoint)

    if ckpt.latest_step() is not None:
        start_step, state, _ = ckpt.restore(abstract_state, train_iter)
        _say(f"resumed from {ckpt.directory} at step {start_step}")
    else:
        start_step = 0
        params = initial_params(source, flat_sh, c.seed)
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        state = dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params, opt_state=opt_state,
                     rng=jax.device_put(jax.random.PRNGKey(c.seed), replicated))

    batch_sh = sharding.batch_sharding(mesh)
    batch_struct = {k: jax.ShapeDtypeStruct((c.batch_size, c.seq_len), dt, sharding=batch_sh)
                    for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
                                  ("loss_mask", jnp.float32))}
    start = time.perf_counter()
    step_fn = jax.jit(make_train_step(graphdef, tx, c.grad_accum_steps), in_shardings=(state_sh, batch_sh),
                      out_shardings=(state_sh, replicated), donate_argnums=0)
    step_fn = step_fn.lower(abstract_state, batch_struct).compile()
    eval_fn = jax.jit(make_eval_step(graphdef), in_shardings=(param_sh, batch_sh), out_shardings=replicated)
    _say(f"compiled the train step in {time.perf_counter() - start:.1f}s")

    metrics = MetricsWriter(workdir)
    schedule = learning_rate_schedule(c)
    flops_per_token = train_flops_per_token(source.config, c.seq_len)
    peak = device_peak_flops()
    meta = dict(model_dir=source.model_dir, seq_len=c.seq_len)
    preemption = _Preemption()
    result: dict[str, Any] = dict(status="completed", workdir=str(workdir))
    if start_step == 0 and c.eval_every > 0 and eval_set:
        eval_loss = evaluate(eval_fn, state["params"], eval_set, mesh)
        metrics.write(0, dict(loss=None, tokens_per_second=None, eval_loss=eval_loss,
                              eval_perplexity=math.exp(min(eval_loss, 50))))
        _say(f"step 0: eval loss {eval_loss:.4f} (perplexity {math.exp(min(eval_loss, 50)):.2f})")
        result["initial_eval_loss"] = eval_loss
    bar = tqdm(total=c.num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, mininterval=1.0)
    try:
        step = start_step
        last_loss = None
        while step < c.num_steps:
            batch = sharding.host_batch_to_global(data_lib.model_batch(next(train_iter)), mesh)
            t0 = time.perf_counter()
            state, m = step_fn(state, batch)
            loss = float(m["loss"])  # also waits for the step: honest timing
            dt = time.perf_counter() - t0
            step += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step}; stopped without saving it; "
                                       f"last good checkpoint: step {ckpt.latest_step()}")
            last_loss = loss
            tps = c.batch_size * c.seq_len / dt
            row = dict(loss=loss, tokens_per_second=tps, learning_rate=float(schedule(step - 1)),
                       grad_norm=float(m["grad_norm"]), step_seconds=dt)
            if peak:
                row["mfu"] = tps * flops_per_token / (peak * len(devices))
            if step % c.eval_every == 0 or step == c.num_steps:
                eval_loss = evaluate(eval_fn, state["params"], eval_set, mesh) if eval_set else None
                if eval_loss is not None:
                    row.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
                    result["eval_loss"] = eval_loss
            if step % c.log_every == 0 or "eval_loss" in row or step == c.num_steps:
                metrics.write(step, row)
            bar.update(1)
            postfix = dict(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
            if "mfu" in row:
                postfix["mfu"] = f"{row['mfu']:.1%}"
            if "eval_loss" in row:
                postfix["eval"] = f"{row['eval_loss']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            if step % c.checkpoint_every == 0 or step == c.num_steps or preemption.requested:
                ckpt.save(step, state, train_iter, meta, force=True)
            if step == c.debug_kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if preemption.requested:
                ckpt.wait()
                _say(f"SIGTERM: saved a checkpoint at step {step} in {ckpt.directory}; exiting")
                result["status"] = "preempted"
                break
        result.update(step=step, loss=last_loss)
    finally:
        bar.close()
        preemption.restore()
        ckpt.close()
        metrics.close()
    if result["status"] == "completed" and jax.process_index() == 0:
        plot_loss_curve(metrics.path, workdir / "loss_curve.png", title=f"{source.config.num_layers}-layer model")
        if c.export.enabled:
            out = workdir / "hf"
            hf.save_hf_params(state["params"], source.config, out, dtype=c.export.dtype,
                              max_shard_size=c.export.max_shard_size, source_dir=source.model_dir, overwrite=True)
            if source.model_dir is None and c.tokenizer and c.tokenizer != "bytes":
                hf.copy_side_files(c.tokenizer, out)
            result["export_dir"] = str(out)
            _say(f"exported the model to {out}")
    return result


def _check_run_file(workdir: Path, source: ModelSource, c) -> None:
    """workdir/run.json records the model; resuming with a different one is refused."""
    record = dict(model_config=source.config.to_hf_config(), model_dir=source.model_dir,
                  tokenizer=c.tokenizer, config=json.loads(c.to_json_best_effort()))
    path = workdir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("model_config") != record["model_config"]:
            raise SolarError(f"{workdir} holds a run of a different model; use another workdir")
    elif jax.process_index() == 0:
        path.write_text(json.dumps(record, indent=2) + "\n")


def main(argv) -> None:
    from absl import flags

    c = flags.FLAGS.config
    try:
        result = train_and_evaluate(c, c.workdir)
    except TrainingDiverged as e:
        import sys

        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    if result["status"] == "completed":
        summary = f"done: step {result['step']}, loss {result['loss']:.4f}"
        if "eval_loss" in result:
            summary += f", eval loss {result['eval_loss']:.4f}"
        _say(summary)


if __name__ == "__main__":
    from solar_jax import cli

    cli.run(main)
