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
import yaml
from flax import nnx
from tqdm import tqdm

from solar_jax import data as data_lib
from solar_jax import hf, sharding
from solar_jax import plan as plan_lib
from solar_jax import model as model_lib
from solar_jax import upscale as upscale_lib
from solar_jax.checkpoint import Checkpointer, abstract_like
from solar_jax.errors import SolarError
from solar_jax import task_data
from solar_jax.objectives import Objective, cross_entropy_objective, dpo_objective, reference_logps_fn
from solar_jax.metrics import MetricsWriter, device_peak_flops, plot_loss_curve, train_flops_per_token
from solar_jax.model_config import ModelConfig, preset
from solar_jax.optim import global_norm, learning_rate_schedule, make_optimizer
from solar_jax.run_config import check_seq_len, validate


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
    if jax.process_count() > 1:
        # Arrays on one local device cannot move onto other hosts' devices; the same host
        # values on every process can (a tensor at a time).
        return model_lib.unflatten_params({p: jax.device_put(np.asarray(v), shardings[p]) for p, v in flat.items()})
    return model_lib.unflatten_params({p: jax.device_put(v, shardings[p]) for p, v in flat.items()})


def make_train_step(graphdef, tx, accum: int, objective: Objective | None = None):
    """(state, batch[, reference params]) -> (state, metrics).

    The loss is the objective's sum over the whole global batch divided by its denominator
    (tokens for cross-entropy, pairs for DPO); with accum > 1 the batch is split into accum
    strided microbatches (each device keeps its rows) whose gradients add up to the
    full-batch gradient."""
    objective = objective or cross_entropy_objective(graphdef)

    def train_step(state, batch, ref=None):
        params = state["params"]
        denom = objective.denominator(batch)

        def micro(p, mb):
            total, metrics = objective.loss(p, mb, ref)
            return total / denom, {k: v / denom for k, v in metrics.items()}

        grad_fn = jax.value_and_grad(micro, has_aux=True)
        if accum == 1:
            (loss, metrics), grads = grad_fn(params, batch)
        else:
            # [B, ...] -> [accum, B/accum, ...], microbatch i = rows i, i+accum, ...
            mbs = jax.tree.map(lambda x: x.reshape((-1, accum) + x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, mb):
                (l, m), g = grad_fn(params, mb)
                return jax.tree.map(jnp.add, carry, (g, l, m)), None

            first = jax.tree.map(lambda x: x[0], mbs)
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(grad_fn, params, first))
            zeros = (zeros[1], zeros[0][0], zeros[0][1])
            (grads, loss, metrics), _ = jax.lax.scan(body, zeros, mbs)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = dict(step=state["step"] + 1, params=optax.apply_updates(params, updates),
                         opt_state=opt_state, rng=state["rng"])
        return new_state, dict(loss=loss, grad_norm=global_norm(grads), **metrics)

    return train_step


def make_eval_step(graphdef, objective: Objective | None = None):
    """(params, batch[, reference]) -> (loss sum, denominator, metric sums)."""
    objective = objective or cross_entropy_objective(graphdef)

    def eval_step(params, batch, ref=None):
        total, metrics = objective.loss(params, batch, ref)
        return total, objective.denominator(batch), metrics

    return eval_step


def evaluate(eval_fn, params, batches, mesh, to_model=data_lib.model_batch, ref=None) -> dict[str, float]:
    """Held-out loss (and the objective's metrics), weighted by each batch's denominator."""
    total, denom, sums = 0.0, 0.0, {}
    for b in batches:
        batch = sharding.put_global_batch(to_model(b), mesh)
        t, n, m = eval_fn(params, batch) if ref is None else eval_fn(params, batch, ref)
        total, denom = total + float(t), denom + float(n)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    if not denom:
        return {}
    return {"eval_loss": total / denom, **{f"eval_{k}": v / denom for k, v in sums.items()}}


def config_text(c) -> str:
    """The run config as plain YAML, keys sorted (ConfigDict.to_yaml writes Python object tags)."""
    return yaml.safe_dump(json.loads(c.to_json_best_effort()), sort_keys=True, default_flow_style=False).strip()


def model_summary(config: ModelConfig, mesh, c) -> str:
    counts = config.param_counts()
    total = sum(counts.values())
    lines = [f"model: {config.model_type}, {config.num_layers} layers, d={config.hidden_size}, "
             f"heads {config.num_heads}/{config.num_kv_heads}, vocab {config.vocab_size}: {total / 1e6:.1f}M params"]
    lines += [f"  {k:14s} {v / 1e6:10.2f}M" for k, v in counts.items()]
    lines.append(f"mesh: data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} tensor={mesh.shape['tensor']} "
                 f"on {mesh.devices.size} {jax.devices()[0].platform} device(s)")
    # What the process runs under (cli sets both unless opted out): worth seeing when comparing runs.
    lines.append(f"runtime: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
                 f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    return "\n".join(lines)


def check_memory(c, config: ModelConfig, devices: list) -> "plan_lib.Plan":
    """The planner's per-device estimate against the device's memory, before anything is
    loaded or compiled; a config that cannot fit is refused with the numbers."""
    device, limit = plan_lib.local_device_name()
    local = [d for d in devices if d.process_index == jax.process_index()]
    p = plan_lib.plan(c, config, device, len(devices), num_local_devices=len(local), capacity=limit)
    if p.fits is False and c.memory_check:
        parts = ", ".join(f"{k} {v / plan_lib.GiB:.2f}" for k, v in p.per_device.items())
        raise SolarError(f"the config needs ~{p.total / plan_lib.GiB:.1f} GiB per device ({parts}) but a {device} "
                         f"device has {p.capacity / plan_lib.GiB:.1f} GiB; shard more (mesh.fsdp), accumulate "
                         f"(grad_accum_steps), remat=full, or lower batch_size/seq_len "
                         f"(memory_check=False runs anyway)")
    return p


class _Preemption:
    """SIGTERM (TPU preemption, scheduler stop) -> finish the step, save, exit cleanly.

    One process: our own signal handler. Several: JAX's preemption sync manager (started by
    jax.distributed.initialize, which watches SIGTERM itself) makes every host agree on the
    same step, so all of them save it; a host-local flag would let hosts save different steps."""

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self._requested = False
        self._previous = None if self.multi_process else signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self._requested = True

    def reached(self, step: int) -> bool:
        """Called once per step, by every process."""
        if self.multi_process:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


def abstract_state(c, config: ModelConfig, mesh):
    """Shapes and shardings of the train state for run config `c` and model `config`:
    params (sharded by the rules), optimizer state (sharded like its params), step and rng
    (replicated). Returns (optimizer, flat param shardings, param shardings, state
    shardings, abstract state)."""
    shapes = hf.param_shapes(config)
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
    abstract = dict(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=abstract_params,
                    opt_state=abstract_like(abstract_opt, opt_sh),
                    rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
    return tx, flat_sh, param_sh, state_sh, abstract


def _objective(c, graphdef) -> Objective:
    if c.task == "dpo":
        return dpo_objective(graphdef, c.dpo.beta, c.dpo.loss_type, c.dpo.label_smoothing,
                             precomputed=c.dpo.reference == "precomputed")
    return cross_entropy_objective(graphdef)


def _reference_fn(c, graphdef, params, mesh):
    """examples -> [N, 2] log-probs of chosen and rejected under `params` (the initial model)."""
    from solar_jax import sft_data

    fn = jax.jit(reference_logps_fn(graphdef, average=c.dpo.loss_type == "ipo"))

    def reference(examples):
        out = []
        for b in sft_data.eval_batches(examples, c.seq_len, c.batch_size):
            batch = sharding.put_global_batch(sft_data.to_model(b), mesh)
            rc, rr = fn(params, batch)
            out.append(np.stack([np.asarray(rc), np.asarray(rr)], axis=1))
        return np.concatenate(out)[: len(examples)] if out else np.zeros((0, 2), np.float32)

    return reference


def train_and_evaluate(c, workdir: str | None = None, devices: list | None = None,
                       verbose: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the training described by config `c` in `workdir`, on `devices`
    (default: all). c.task: cpt (documents), sft (instructions), dpo (preference pairs).
    verbose=False leaves out the config dump and the model summary (the recipe's stages)."""
    devices = list(devices if devices is not None else jax.devices())
    workdir = Path(workdir or c.workdir)
    if not str(workdir):
        raise SolarError("workdir is required (--config.workdir=RUN_DIR)")
    validate(c, len(devices))
    source = resolve_model(c)
    check_seq_len(c, source.config.max_position_embeddings)
    tokenizer = data_lib.load_tokenizer(c.tokenizer, source.model_dir)
    if tokenizer.vocab_size > source.config.vocab_size:
        raise SolarError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab is "
                         f"{source.config.vocab_size}")
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, devices)
    memory = check_memory(c, source.config, devices)
    # Under the mesh, the model keeps activations batch-sharded (model.batch_sharded).
    with jax.set_mesh(mesh):
        return _train_on_mesh(c, workdir, devices, verbose, source, tokenizer, mesh, memory)


def _train_on_mesh(c, workdir: Path, devices: list, verbose: bool, source: ModelSource, tokenizer, mesh,
                   memory: plan_lib.Plan) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    _check_run_file(workdir, source, c)
    if verbose:
        _say("config:\n" + "\n".join(f"  {line}" for line in config_text(c).splitlines()))
        _say(model_summary(source.config, mesh, c))
        _say(memory.report())

    options = dict(dtype=c.dtype, remat=c.remat, attention_impl=c.attention_impl)
    graphdef, _ = nnx.split(model_lib.abstract_model(source.config, **options))
    tx, flat_sh, param_sh, state_sh, abstract = abstract_state(c, source.config, mesh)
    replicated = sharding.replicated(mesh)
    ckpt = Checkpointer(c.checkpoint_dir or workdir / "checkpoints", keep=c.keep_checkpoints,
                        async_save=c.async_checkpoint)
    resuming = ckpt.latest_step() is not None
    # The initial weights are needed to start, and by DPO for its reference (a frozen copy, or
    # log-probs computed once): load them only then.
    needs_initial = not resuming or c.task == "dpo"
    initial = initial_params(source, flat_sh, c.seed) if needs_initial else None
    reference = None
    if c.task == "dpo" and c.dpo.reference == "precomputed":
        reference = _reference_fn(c, graphdef, initial, mesh)
    data = task_data.build(c, tokenizer, reference, cache_dir=workdir)
    _say(f"data: {data.description}")
    train_iter = iter(data.train)
    objective = _objective(c, graphdef)
    ref_params = None
    if objective.needs_reference:  # a frozen copy: the policy's buffers are donated each step
        ref_params = jax.tree.map(jnp.copy, initial)

    if resuming:
        del initial
        start_step, state, _ = ckpt.restore(abstract, train_iter)
        _say(f"resumed from {ckpt.directory} at step {start_step}")
    else:
        start_step = 0
        opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(initial)
        state = dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=initial, opt_state=opt_state,
                     rng=jax.device_put(jax.random.PRNGKey(c.seed), replicated))

    batch_structs = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
                     for k, (shape, dt) in data.fields.items()}
    batch_sh = {k: v.sharding for k, v in batch_structs.items()}
    start = time.perf_counter()
    train_step = make_train_step(graphdef, tx, c.grad_accum_steps, objective)
    eval_step = make_eval_step(graphdef, objective)
    if ref_params is None:
        step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                          donate_argnums=0).lower(abstract, batch_structs).compile()
        eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh), out_shardings=replicated)
        run_step = step_fn
    else:
        step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh, param_sh),
                          out_shardings=(state_sh, replicated), donate_argnums=0)
        step_fn = step_fn.lower(abstract, batch_structs, abstract["params"]).compile()
        eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh, param_sh), out_shardings=replicated)
        run_step = lambda st, b: step_fn(st, b, ref_params)
    _say(f"compiled the train step in {time.perf_counter() - start:.1f}s")

    def run_eval(params):
        return evaluate(eval_fn, params, data.eval, mesh, data.to_model, ref_params)

    metrics = MetricsWriter(workdir)
    schedule = learning_rate_schedule(c)
    tokens_per_step = c.batch_size * c.seq_len * data.rows_per_example
    flops_per_token = train_flops_per_token(source.config, c.seq_len)
    peak = device_peak_flops()
    meta = dict(model_dir=source.model_dir, seq_len=c.seq_len, task=c.task)
    preemption = _Preemption()
    result: dict[str, Any] = dict(status="completed", workdir=str(workdir))
    if start_step == 0 and data.eval:
        ev = run_eval(state["params"])
        if ev:
            metrics.write(0, dict(loss=None, tokens_per_second=None, **ev, **_perplexity(c, ev)))
            _say(f"step 0: {_eval_line(ev)}")
            result["initial_eval"] = ev
            result["initial_eval_loss"] = ev["eval_loss"]
    bar = tqdm(total=c.num_steps, initial=start_step, desc=c.task, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, mininterval=1.0)
    try:
        step = start_step
        last_loss = None
        while step < c.num_steps:
            batch = sharding.put_global_batch(data.to_model(next(train_iter)), mesh)
            t0 = time.perf_counter()
            state, m = run_step(state, batch)
            loss = float(m["loss"])  # also waits for the step: honest timing
            dt = time.perf_counter() - t0
            step += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step}; stopped without saving it; "
                                       f"last good checkpoint: step {ckpt.latest_step()}")
            last_loss = loss
            tps = tokens_per_step / dt
            row = dict(loss=loss, tokens_per_second=tps, learning_rate=float(schedule(step - 1)),
                       grad_norm=float(m["grad_norm"]), step_seconds=dt)
            row.update({k: float(v) for k, v in m.items() if k not in ("loss", "grad_norm")})
            if c.task == "dpo":
                row["pairs_per_second"] = c.batch_size / dt
            if peak:
                row["mfu"] = tps * flops_per_token / (peak * len(devices))
            if (step % c.eval_every == 0 or step == c.num_steps) and data.eval:
                ev = run_eval(state["params"])
                row.update(ev, **_perplexity(c, ev))
                if ev:
                    result["eval"] = ev
                    result["eval_loss"] = ev["eval_loss"]
            if step % c.log_every == 0 or "eval_loss" in row or step == c.num_steps:
                metrics.write(step, row)
            bar.update(1)
            postfix = dict(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
            if "rewards/accuracies" in row:
                postfix["acc"] = f"{row['rewards/accuracies']:.2f}"
            if "mfu" in row:
                postfix["mfu"] = f"{row['mfu']:.1%}"
            if "eval_loss" in row:
                postfix["eval"] = f"{row['eval_loss']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            preempted = preemption.reached(step)
            if step % c.checkpoint_every == 0 or step == c.num_steps or preempted:
                ckpt.save(step, state, train_iter, meta, force=True)
            if step == c.debug_kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if preempted:
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
    if result["status"] == "completed":
        if jax.process_index() == 0:
            plot_loss_curve(metrics.path, workdir / "loss_curve.png",
                            title=f"{c.task}: {source.config.num_layers}-layer model")
        if c.export.enabled:  # collective: every process gathers each tensor, process 0 writes
            out = workdir / "hf"
            hf.save_hf_params(state["params"], source.config, out, dtype=c.export.dtype,
                              max_shard_size=c.export.max_shard_size, source_dir=source.model_dir, overwrite=True)
            if source.model_dir is None and c.tokenizer and c.tokenizer != "bytes" and jax.process_index() == 0:
                hf.copy_side_files(c.tokenizer, out)
            result["export_dir"] = str(out)
            _say(f"exported the model to {out}")
    return result


def _perplexity(c, ev: dict[str, float]) -> dict[str, float]:
    if c.task == "dpo" or "eval_loss" not in ev:
        return {}
    return {"eval_perplexity": math.exp(min(ev["eval_loss"], 50))}


def _eval_line(ev: dict[str, float]) -> str:
    parts = [f"eval loss {ev['eval_loss']:.4f}"]
    if "eval_rewards/accuracies" in ev:
        parts.append(f"reward accuracy {ev['eval_rewards/accuracies']:.3f}, margin {ev['eval_rewards/margins']:.4f}")
    else:
        parts.append(f"perplexity {math.exp(min(ev['eval_loss'], 50)):.2f}")
    return ", ".join(parts)


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

    from solar_jax import distributed

    distributed.initialize_from_flags()  # before any backend starts
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

    from solar_jax import distributed

    cli.run(main, define=distributed.define_flags)
