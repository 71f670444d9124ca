"""The compiled pieces of a run: the train step, the eval step, DPO's reference log-probs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from solar_jax.models import attention
from solar_jax.models.config import ModelConfig
from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import sft_data
from solar_jax.parallel import sharding
from solar_jax.training.objectives import Objective, cross_entropy_objective, dpo_objective, reference_logps_fn
from solar_jax.training.optim import global_norm
from solar_jax.inference.scoring import PackedScorer
from solar_jax.weights import hf


def objective_for(c, graphdef) -> Objective:
    """What run config `c` minimises: cross-entropy (cpt, sft) or DPO."""
    if c.task == "dpo":
        return dpo_objective(graphdef, c.dpo.beta, c.dpo.loss_type, c.dpo.label_smoothing,
                             precomputed=c.dpo.reference == "precomputed")
    return cross_entropy_objective(graphdef)


def model_options(c, mesh, config: ModelConfig) -> dict[str, Any]:
    """The model's run options for config c on mesh: the attention kernel resolved for the
    mesh's devices (a TPU slice compiled from a CPU host gets splash, not the host's kernel),
    and where activations and layer weights live on the mesh (sharding.model_placement)."""
    platform = mesh.devices.flat[0].platform
    return dict(dtype=c.dtype, remat=c.remat, attention_impl=attention.resolve(c.attention_impl, platform, c.dtype),
                scan_unroll=c.scan_unroll, logits_dtype=c.logits_dtype,
                placement=sharding.model_placement(hf.param_shapes(config), mesh))


def lower_train_step(c, graphdef, layout, objective: Objective, fields: dict, mesh, trainable: dict | None = None):
    """The train step jitted with its shardings (state donated) and lowered for the batch
    fields (task_data.batch_fields): the one path the train command and plan --compile share.
    Call under jax.set_mesh(mesh); it runs nothing eagerly, so mesh may be an AOT topology."""
    structs = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
               for k, (shape, dt) in fields.items()}
    state_sh = layout.state_shardings
    ref = (layout.param_shardings,) if objective.needs_reference else ()
    ref_abstract = (layout.abstract["params"],) if objective.needs_reference else ()
    step = make_train_step(graphdef, layout.optimizer, c.grad_accum_steps, objective, trainable)
    return jax.jit(step, in_shardings=(state_sh, {k: v.sharding for k, v in structs.items()}, *ref),
                   out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=0).lower(layout.abstract, structs, *ref_abstract)


def make_train_step(graphdef, tx, accum: int, objective: Objective | None = None, trainable: dict | None = None):
    """(state, batch[, reference params]) -> (state, metrics).

    trainable (state.trainable_mask): multipliers on the gradients (so clipping sees only
    what trains) and on the updates (so weight decay leaves frozen tensors alone); None
    trains everything.

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

        # The model's placement (graphdef) keeps each layer's weights at their FSDP layout:
        # each layer's gradient is then reduced inside the backward loop.
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
        if trainable is not None:
            grads = jax.tree.map(lambda g, m: g * m, grads, trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        if trainable is not None:
            updates = jax.tree.map(lambda u, m: u * m, updates, trainable)
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


def evaluate(eval_fn, params, batches, mesh, to_model=pretrain_lib.model_batch, ref=None) -> dict[str, float]:
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


def reference_fn(c, graphdef, params, mesh):
    """examples -> [N, 2] log-probs of chosen and rejected under `params` (the initial model):
    DPO's precomputed reference (sums, or means over response tokens for IPO). With a dense
    attention kernel the packed engine (scoring.py) computes them: chosen and rejected share
    their prompt, which then runs once. Flash kernels (splash, cudnn) take segment ids, not
    the engine's tree mask: they score the pairs as training lays them out."""
    average = c.dpo.loss_type == "ipo"
    model = nnx.merge(graphdef, params)
    if model.kernel == "xla":
        scorer = PackedScorer(model, c.batch_size, c.seq_len, mesh)

        def reference(examples: list[Any]) -> np.ndarray:
            pairs = [_prompt_and_response(ex, side) for ex in examples for side in ("chosen", "rejected")]
            lps, _ = scorer.score(pairs)
            sums = np.asarray([lp.mean() if average else lp.sum(dtype=np.float64) for lp in lps], np.float32)
            return sums.reshape(len(examples), 2)

        return reference

    fn = jax.jit(reference_logps_fn(graphdef, average=average), out_shardings=sharding.replicated(mesh))

    def reference(examples: list[Any]) -> np.ndarray:
        out = []
        for b in sft_data.eval_batches(examples, c.seq_len, c.batch_size):
            batch = sharding.put_global_batch(sft_data.to_model(b), mesh)
            rc, rr = fn(params, batch)
            out.append(np.stack([np.asarray(rc), np.asarray(rr)], axis=1))
        return np.concatenate(out)[: len(examples)] if out else np.zeros((0, 2), np.float32)

    return reference


def _prompt_and_response(example: dict, side: str) -> tuple[list[int], list[int]]:
    """An example's sequence (make_sequence: inputs, targets, loss_mask on the response's
    targets, one run to the end) -> (prompt ids, response ids) for the scorer."""
    inputs, targets, mask = (np.asarray(example[f"{side}_{k}"]) for k in ("inputs", "targets", "loss_mask"))
    first = int(np.argmax(mask > 0))  # target `first` is the response's first token
    return inputs[:first + 1].tolist(), targets[first:].tolist()
