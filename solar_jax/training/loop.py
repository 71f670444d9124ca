"""train_and_evaluate(config, workdir): a whole run, read top to bottom.

validate -> model source -> data -> mesh -> state (restored, or initialised under jit with
out_shardings) -> compiled step with donated state -> loop (log, eval, checkpoint, SIGTERM,
NaN guard) -> loss curve and export to an HF dir under the workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from solar_jax.errors import RunFailed, SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.training import memory as memory_lib
from solar_jax.parallel import sharding
from solar_jax.data import task_data, token_shards
from solar_jax.training.checkpoint import Checkpointer
from solar_jax.training.metrics import MetricsWriter, device_peak_flops, plot_loss_curve, train_flops_per_token
from solar_jax.training.optim import learning_rate_schedule
from solar_jax.config_files import split_list
from solar_jax.training.run_config import check_seq_len, validate
from solar_jax.training.runs import RUN_FILE, read_run_record, run_record
from solar_jax.training.state import (ModelSource, StateLayout, initial_params, initial_state, resolve_model,
                                      state_layout, trainable_mask)
from solar_jax.training.step import (evaluate, lower_train_step, make_eval_step, model_options, objective_for,
                                     reference_fn)
from solar_jax.weights import hf, locks, paths


class TrainingDiverged(RunFailed):
    """The loss became NaN or inf; the run stopped keeping its last good checkpoint."""


def config_text(c) -> str:
    """The run config as plain YAML, keys sorted (ConfigDict.to_yaml writes Python object tags)."""
    return yaml.safe_dump(json.loads(c.to_json_best_effort()), sort_keys=True, default_flow_style=False).strip()


def model_summary(config: ModelConfig, mesh) -> str:
    counts = config.param_counts()
    total = sum(counts.values())
    lines = [f"model: {config.model_type}, {config.num_layers} layers, d={config.hidden_size}, "
             f"heads {config.num_heads}/{config.num_kv_heads}, vocab {config.vocab_size}: {total / 1e6:.1f}M params"]
    lines += [f"  {k:14s} {v / 1e6:10.2f}M" for k, v in counts.items()]
    lines.append(f"mesh: {' x '.join(f'{k}={v}' for k, v in mesh.shape.items())} "
                 f"on {mesh.devices.size} {jax.devices()[0].platform} device(s)")
    # What the process runs under (cli sets both unless opted out): worth seeing when comparing runs.
    lines.append(f"runtime: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
                 f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    return "\n".join(lines)


def check_memory(c, config: ModelConfig, devices: list) -> memory_lib.Plan:
    """The planner's per-device estimate against the device's memory, before anything is
    loaded or compiled; a config that cannot fit is refused with the numbers."""
    device, limit = memory_lib.local_device_name()
    local = [d for d in devices if d.process_index == jax.process_index()]
    p = memory_lib.plan(c, config, device, len(devices), num_local_devices=len(local), capacity=limit)
    if p.fits is False and c.memory_check:
        parts = ", ".join(f"{k} {v / memory_lib.GiB:.2f}" for k, v in p.per_device.items())
        raise SolarError(f"the config needs ~{p.total / memory_lib.GiB:.1f} GiB per device ({parts}) but a {device} "
                         f"device has {p.capacity / memory_lib.GiB:.1f} GiB; shard more (mesh.fsdp), accumulate "
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
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


def train_and_evaluate(c, workdir: str | None = None, devices: list | None = None,
                       verbose: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the training described by config `c` in `workdir`, on `devices`
    (default: all). c.task: cpt (documents), sft (instructions), dpo (preference pairs).
    verbose=False leaves out the config dump and the model summary (the recipe's stages)."""
    devices = list(devices if devices is not None else jax.devices())
    target = str(workdir or c.workdir)
    if not target:
        raise SolarError("workdir is required (--config.workdir=RUN_DIR)")
    # A remote workdir (gs://...) is written in a local mirror, pushed at every checkpoint
    # and at the end; its checkpoints go to the remote dir directly (weights/paths.py).
    mirror = paths.Mirror(target, skip=("checkpoints", locks.WORKDIR_LOCK)) if paths.is_remote(target) else None
    workdir = mirror.local if mirror else Path(target)
    checkpoint_dir = c.checkpoint_dir or (f"{mirror.url}/checkpoints" if mirror else workdir / "checkpoints")
    validate(c, len(devices))
    if not mirror and workdir.exists() and not workdir.is_dir():
        raise SolarError(f"workdir {workdir} is a file, not a directory")
    with _one_run_per_workdir(f"{mirror.url}/{locks.WORKDIR_LOCK}" if mirror else workdir / locks.WORKDIR_LOCK,
                              mirror.url if mirror else str(workdir)):
        return _train_in(c, mirror, workdir, checkpoint_dir, devices, verbose)


def _train_in(c, mirror, workdir: Path, checkpoint_dir, devices: list, verbose: bool) -> dict[str, Any]:
    """train_and_evaluate once the workdir is this run's."""
    source = resolve_model(c)
    check_seq_len(c, source.config.max_position_embeddings)
    tokenizer = tokenizer_lib.load_tokenizer(c.tokenizer, source.model_dir)
    if tokenizer.vocab_size > source.config.vocab_size:
        raise SolarError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab is "
                         f"{source.config.vocab_size}")
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, devices)
    memory = check_memory(c, source.config, devices)
    if mirror:
        mirror.pull()
    record = _check_run_file(workdir, source, c)
    if verbose:
        _say("config:\n" + "\n".join(f"  {line}" for line in config_text(c).splitlines()))
        _say(model_summary(source.config, mesh))
        _say(memory.report())
    # Under the mesh, the model keeps activations batch-sharded (its placement, model_options).
    with jax.set_mesh(mesh):
        with _removed_on_failure(workdir):  # data, reference, compile: a failed start leaves nothing
            run = _set_up(c, workdir, checkpoint_dir, source, tokenizer, mesh)
            if record is not None and jax.process_index() == 0:
                if record.get("resume_changes"):
                    record["resume_changes"][-1]["at_step"] = run.start_step
                (workdir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if mirror and jax.process_index() == 0:
            run.sync = mirror.push
        run.sync()
        result = _loop(c, run, source.config, len(devices))
        if result["status"] == "completed":
            result.update(_finish(c, run, workdir, source, shown=mirror.url if mirror else str(workdir)))
            run.sync()
    if mirror:
        result["workdir"] = mirror.url
        if "export_dir" in result:
            result["export_dir"] = f"{mirror.url}/hf"
    return result


@dataclasses.dataclass
class _Run:
    """What the loop needs, built once by _set_up."""

    mesh: Any
    checkpointer: Checkpointer
    data: task_data.TaskData
    train_iter: Any
    state: dict
    start_step: int
    run_step: Callable[[dict, dict], tuple[dict, dict]]
    run_eval: Callable[[dict], dict[str, float]]
    metrics: MetricsWriter
    meta: dict[str, Any]
    sync: Callable[[], None] = lambda: None  # pushes a remote workdir's mirror (process 0)


def _set_up(c, workdir: Path, checkpoint_dir, source: ModelSource, tokenizer, mesh) -> _Run:
    graphdef, _ = nnx.split(model_lib.abstract_model(source.config, **model_options(c, mesh, source.config)))
    layout = state_layout(c, source.config, mesh)
    ckpt = Checkpointer(checkpoint_dir, keep=c.keep_checkpoints, async_save=c.async_checkpoint,
                        compression=c.checkpoint_compression)
    resuming = ckpt.latest_step() is not None
    # The initial weights are needed to start, and by DPO for its reference (a frozen copy, or
    # log-probs computed once): load them only then.
    initial = initial_params(source, layout.flat_param_shardings, c.seed) if not resuming or c.task == "dpo" else None
    reference = None
    if c.task == "dpo" and c.dpo.reference == "precomputed":
        reference = reference_fn(c, graphdef, initial, mesh)
    data = task_data.build(c, tokenizer, reference, cache_dir=workdir,
                           local_rows=sharding.local_rows(mesh, c.batch_size))
    _say(f"data: {data.description}")
    train_iter = iter(data.train)
    objective = objective_for(c, graphdef)
    # A frozen reference is a copy: the policy's buffers are donated at every step.
    ref_params = jax.tree.map(jnp.copy, initial) if objective.needs_reference else None
    if resuming:
        start_step, state, _ = ckpt.restore(layout.abstract, train_iter)
        _say(f"resumed from {ckpt.directory} at step {start_step}")
    else:
        start_step, state = 0, initial_state(layout, initial, c.seed, mesh)
    del initial
    run_step, run_eval = _compile(c, graphdef, layout, objective, data, mesh, ref_params, trainable_mask(source))
    meta = dict(model_dir=source.model_dir, seq_len=c.seq_len, task=c.task)
    return _Run(mesh, ckpt, data, train_iter, state, start_step, run_step, run_eval, MetricsWriter(workdir), meta)


def _compile(c, graphdef, layout: StateLayout, objective, data, mesh, ref_params, trainable=None):
    """The train step, compiled ahead of the loop for the batch's shapes and shardings (its
    time is reported), and the eval function; both take the frozen reference when DPO has one."""
    replicated = sharding.replicated(mesh)
    batch_sh = {k: sharding.batch_sharding(mesh, len(shape)) for k, (shape, _) in data.fields.items()}
    param_sh = layout.param_shardings
    ref_sh = () if ref_params is None else (param_sh,)
    ref_args = () if ref_params is None else (ref_params,)
    start = time.perf_counter()
    step_fn = lower_train_step(c, graphdef, layout, objective, data.fields, mesh, trainable).compile()
    eval_fn = jax.jit(make_eval_step(graphdef, objective), in_shardings=(param_sh, batch_sh, *ref_sh),
                      out_shardings=replicated)
    _say(f"compiled the train step in {time.perf_counter() - start:.1f}s")

    def run_step(state, batch):
        return step_fn(state, batch, *ref_args)

    def run_eval(params):
        return evaluate(eval_fn, params, data.eval, mesh, data.to_model, ref_params)

    return run_step, run_eval


def _loop(c, run: _Run, config: ModelConfig, num_devices: int) -> dict[str, Any]:
    """Steps from run.start_step to c.num_steps: log, evaluate, checkpoint, stop on SIGTERM."""
    schedule = learning_rate_schedule(c)
    tokens_per_step = c.batch_size * c.seq_len * run.data.rows_per_example
    flops_per_token = train_flops_per_token(config, c.seq_len)
    peak = device_peak_flops()
    preemption = _Preemption()
    result: dict[str, Any] = dict(status="completed", workdir=str(run.metrics.path.parent), step=run.start_step,
                                  loss=None)
    if run.start_step == 0 and run.data.eval:
        ev = run.run_eval(run.state["params"])
        if ev:
            run.metrics.write(0, dict(loss=None, tokens_per_second=None, **ev, **_perplexity(c, ev)))
            _say(f"step 0: {_eval_line(ev)}")
            result.update(initial_eval=ev, initial_eval_loss=ev["eval_loss"])
    bar = tqdm(total=c.num_steps, initial=run.start_step, desc=c.task, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, mininterval=1.0)
    try:
        step = run.start_step
        while step < c.num_steps:
            try:
                host = run.data.to_model(next(run.train_iter))
            except token_shards.DataReadError as e:
                raise SolarError(f"{e}; last good checkpoint: step {run.checkpointer.latest_step()}") from None
            batch = (sharding.put_global_batch(host, run.mesh) if run.data.rows is None
                     else sharding.put_local_rows(host, run.data.rows, c.batch_size, run.mesh))
            t0 = time.perf_counter()
            run.state, m = run.run_step(run.state, batch)
            loss = float(m["loss"])  # also waits for the step: honest timing
            dt = time.perf_counter() - t0
            step += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step}; stopped without saving it; "
                                       f"last good checkpoint: step {run.checkpointer.latest_step()}")
            row = _step_row(c, m, step, dt, schedule, tokens_per_step)
            if peak:
                row["mfu"] = row["tokens_per_second"] * flops_per_token / (peak * num_devices)
            if (step % c.eval_every == 0 or step == c.num_steps) and run.data.eval:
                ev = run.run_eval(run.state["params"])
                row.update(ev, **_perplexity(c, ev))
                if ev:
                    result.update(eval=ev, eval_loss=ev["eval_loss"])
            if step % c.log_every == 0 or "eval_loss" in row or step == c.num_steps:
                run.metrics.write(step, row)
            bar.update(1)
            bar.set_postfix(_postfix(row), refresh=False)
            result.update(step=step, loss=loss)
            preempted = preemption.reached(step)
            checkpoints = c.checkpoint_every > 0
            if checkpoints and (step % c.checkpoint_every == 0 or step == c.num_steps or preempted):
                run.checkpointer.save(step, run.state, run.train_iter, run.meta, force=True)
                run.sync()  # a remote workdir gets the metrics up to this checkpoint
            if preempted:
                run.checkpointer.wait()
                _say(f"SIGTERM: saved a checkpoint at step {step} in {run.checkpointer.directory}; exiting"
                     if checkpoints else f"SIGTERM: stopped at step {step} with no checkpoint (checkpoint_every=0)")
                result["status"] = "preempted"
                break
    except BaseException:
        bar.leave = False  # a failure clears the bar: the error line stands alone
        raise
    finally:
        bar.close()
        preemption.restore()
        run.checkpointer.close()
        run.metrics.close()
    return result


def _step_row(c, m: dict, step: int, dt: float, schedule, tokens_per_step: int) -> dict[str, float]:
    """One metrics.jsonl row from the step's metrics."""
    row = dict(loss=float(m["loss"]), tokens_per_second=tokens_per_step / dt,
               learning_rate=float(schedule(step - 1)), grad_norm=float(m["grad_norm"]), step_seconds=dt)
    row.update({k: float(v) for k, v in m.items() if k not in ("loss", "grad_norm")})
    if c.task == "dpo":
        row["pairs_per_second"] = c.batch_size / dt
    return row


def _postfix(row: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures: loss, tokens/s, and what the step measured besides."""
    postfix = dict(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_second']:,.0f}")
    if "rewards/accuracies" in row:
        postfix["acc"] = f"{row['rewards/accuracies']:.2f}"
    if "mfu" in row:
        postfix["mfu"] = f"{row['mfu']:.1%}"
    if "eval_loss" in row:
        postfix["eval"] = f"{row['eval_loss']:.3f}"
    return postfix


def _finish(c, run: _Run, workdir: Path, source: ModelSource, shown: str) -> dict[str, Any]:
    """A completed run: the loss curve, and the HF export (collective: every process gathers
    each tensor, process 0 writes). shown: the workdir as the user named it (a remote one's
    mirror is pushed after this)."""
    if jax.process_index() == 0:
        plot_loss_curve(run.metrics.path, workdir / "loss_curve.png",
                        title=f"{c.task}: {source.config.num_layers}-layer model")
    if not c.export.enabled:
        return {}
    out = workdir / "hf"
    hf.save_hf_params(run.state["params"], source.config, out, dtype=c.export.dtype,
                      max_shard_size=c.export.max_shard_size, source_dir=source.model_dir, overwrite=True)
    if source.model_dir is None and c.tokenizer and c.tokenizer != "bytes" and jax.process_index() == 0:
        hf.copy_side_files(c.tokenizer, out)
    _say(f"exported the model to {shown.rstrip('/')}/hf")
    return dict(export_dir=str(out))


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


# Keys a resumed run must share with the run it resumes: they decide the model, the data and
# its order, and the batches (a checkpoint's data position means nothing under other ones).
# Schedules, logging, checkpointing, the mesh and data-loading speed may change freely.
RESUME_KEYS = ("task", "model_dir", "model_preset", "tokenizer", "upscale_m", "upscale_slices", "upscale_init",
               "upscale_train", "batch_size", "seq_len", "seed", "packing", "template", "dpo")
RESUME_FREE_DATA_KEYS = ("num_threads", "prefetch", "verify_shards")


def _resume_differences(before: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Guarded keys whose values differ: dotted key -> (recorded, now); keys an older record
    lacks are not compared."""
    keys = [*RESUME_KEYS, *(f"data.{k}" for k in now.get("data", {}) if k not in RESUME_FREE_DATA_KEYS)]

    def get(config, key):
        for part in key.split("."):
            if not isinstance(config, dict) or part not in config:
                return KeyError
            config = config[part]
        return config

    return {k: (get(before, k), get(now, k)) for k in keys
            if get(before, k) is not KeyError and get(before, k) != get(now, k)}


def _check_run_file(workdir: Path, source: ModelSource, c) -> dict[str, Any] | None:
    """workdir/run.json records the model and the run config; resuming with a different model
    is refused, and so is one with other data, batches or seed unless --config.resume_changes
    names each changed key (the change is then recorded in run.json). Returns the record to
    write once the run has started (None: it is there already and unchanged)."""
    # A gs:// model_dir is recorded as its URL, not as this host's cache path.
    record = run_record(source.config, c.model_dir if paths.is_remote(c.model_dir) else source.model_dir, c)
    if not (workdir / RUN_FILE).exists():
        return record
    previous = read_run_record(workdir)
    if previous.get("model_config") != record["model_config"]:
        raise SolarError(f"{workdir} holds a run of a different model; use another workdir")
    changed = _resume_differences(previous.get("config", {}), record["config"])
    accepted = set(split_list(c.resume_changes))
    refused = [k for k in changed if k not in accepted and k.split(".")[0] not in accepted]
    if refused:
        shown = "; ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise SolarError(f"resuming {workdir} with a changed {shown}: start another workdir, or accept the change "
                         f"with --config.resume_changes={','.join(refused)} (recorded in {RUN_FILE})")
    if not changed:
        return None
    history = [*previous.get("resume_changes", []), dict(
        time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        changed={k: list(v) for k, v in changed.items()})]
    _say("resuming with accepted changes: " + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return dict(record, resume_changes=history)


@contextlib.contextmanager
def _one_run_per_workdir(lock, target: str):
    """The workdir's lock, held by process 0 for the whole run (one lock per run, not per
    host); every process refuses together if it is held. A workdir the lock created is
    removed again if the run leaves it empty (a start refused before writing anything)."""
    made = not paths.is_remote(target) and not Path(target).exists()
    message = ""
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            try:
                stack.enter_context(locks.hold(lock, "workdir", target))
            except SolarError as e:
                message = str(e)
        if jax.process_count() > 1 and bool(multihost_utils.broadcast_one_to_all(np.int32(bool(message)))):
            message = message or f"workdir {target} is in use by another run (process 0 names it)"
        if message:
            raise SolarError(message)
        try:
            yield
        finally:
            stack.close()
            if made and Path(target).is_dir() and not any(Path(target).iterdir()):
                Path(target).rmdir()


@contextlib.contextmanager
def _removed_on_failure(workdir: Path):
    """Creates workdir; if the block fails, removes what it added at the top of workdir (an
    empty checkpoints/, caches, metrics) and workdir itself if it was made here, so that
    the next run to that workdir starts as if this one had not been tried."""
    made = not workdir.exists()
    before = set(workdir.iterdir()) if not made else set()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if jax.process_index() == 0:
            for path in set(workdir.iterdir()) - before:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if made:
                shutil.rmtree(workdir, ignore_errors=True)
        raise
