"""The fast planner against the compiled memory of the real train step (plan --compile's
path) on TPU slices (libtpu) or GPU hosts (XLA's GPU compiler), with neither attached: per
sample step, the compiled peak per device and the planner's total. fit=True also refits the
planner's table for that platform (plan.TPU_ACTIVATION_COEFFICIENTS and
plan.TPU_GENERATION_FACTOR, or plan.GPU_ACTIVATION_COEFFICIENTS and plan.GPU_FACTOR) to
these compiles and to the 10.7B compiles recorded in docs/results (BIG_STEPS, GPU_BIG_STEPS;
on TPU compiling those again takes ~2 min each) and prints both tables.

The samples are sized so that HBM holds the working set (0.6-10 GiB per chip): below ~1 GiB
libtpu keeps buffers in on-chip memory, by generation (the same 3-layer step at 8 x 512:
79 MiB of HBM temporaries on v5e, 251 MiB on v5p), which no per-token model can follow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import lsq_linear

from solar_jax.bench.tpu import task_config
from solar_jax.cli import split_list
from solar_jax.errors import SolarError
from solar_jax.hardware.chips import CHIPS
from solar_jax.models.config import ModelConfig
from solar_jax.planning import compiled as compiled_plan
from solar_jax.training import memory as plan
from solar_jax.training.run_config import base_config, validate
from solar_jax.training.state import resolve_model

GiB = 2**30
# Mistral's head layout (8 query heads of 128 over 2 kv heads) at width 1024, with a small
# and a Llama/Mistral-sized vocabulary.
SMALL = ModelConfig(model_type="mistral", vocab_size=4096, hidden_size=1024, intermediate_size=3584, num_layers=3,
                    num_heads=8, num_kv_heads=2, head_dim=128, sliding_window=256, max_position_embeddings=4096)
MODELS = {"d1024 L3 v4k": SMALL, "d1024 L3 v32k": dataclasses.replace(SMALL, vocab_size=32000)}
# (model, batch, seq) on 4 chips: 4-8 rows per chip.
STEPS = (("d1024 L3 v4k", 16, 4096), ("d1024 L3 v4k", 32, 4096), ("d1024 L3 v4k", 32, 2048),
         ("d1024 L3 v32k", 16, 4096))
REMATS = ("none", "full", "dots", "dots_no_batch")
# What each policy must keep per layer: full the layer inputs, dots* the projections' outputs,
# none those and the MLP's elementwise outputs; every policy the gradients.
LOWER_BOUNDS = {"none": dict(d=2, f=3, q=1, g=1), "full": dict(d=1, g=1), "dots": dict(d=2, f=2, q=1, g=1),
                "dots_no_batch": dict(d=2, f=2, q=1, g=1)}
C0_MAX_MIB = 64  # fixed buffers and code: 17-40 MiB compiled here
# SOLAR 10.7B steps compiled on 2026-12-02/03 (docs/results/tpu-2026-12-0[23]): task, slice,
# overrides of the task's :solar config, compiled peak GiB per chip (arguments + temporaries
# + outputs - aliased + code). Steps libtpu refused are left out: the temporaries it names
# then are its attempt at the limit, not the same measure.
BIG_STEPS = (
    ("cpt", "v5p-128", "", 72.5), ("sft", "v5p-128", "", 71.3), ("dpo", "v5p-128", "", 71.1),
    ("cpt", "v5p-128", "remat=full,grad_accum_steps=1,batch_size=256", 16.39),
    ("cpt", "v4-128", "remat=full,grad_accum_steps=2", 28.8), ("sft", "v4-128", "remat=full", 16.1),
    ("dpo", "v4-128", "remat=full", 16.1), ("cpt", "v4-128", "remat=full,grad_accum_steps=4", 17.4),
    ("cpt", "v4-128", "remat=full,grad_accum_steps=2,mesh.data=2,mesh.fsdp=32", 33.5),
    ("cpt", "v5e-256", "remat=full,grad_accum_steps=1", 12.3), ("sft", "v5e-256", "remat=full", 5.2),
    ("dpo", "v5e-256", "remat=full,batch_size=256", 7.6), ("cpt", "v5e-256", "remat=full,grad_accum_steps=2", 7.9),
    ("cpt", "v5e-256", "remat=full,grad_accum_steps=1,mesh.data=2,mesh.fsdp=128", 13.5),
    ("cpt", "v6e-256", "", 19.4), ("sft", "v6e-256", "", 19.0), ("dpo", "v6e-256", "remat=full,batch_size=256", 7.9),
    ("cpt", "v6e-256", "remat=full,grad_accum_steps=1", 13.1),
    ("cpt", "v6e-256", "remat=full,grad_accum_steps=1,mesh.data=2,mesh.fsdp=128", 14.1),
)
# The same on GPU hosts, from plan --search on 2026-12-05 (docs/results/gpu-2026-12-05/):
# compiled peak GiB per GPU. On GPU remat dots and dots_no_batch compile alike (cuDNN's
# attention has no batched dot to save).
GPU_BIG_STEPS = (
    ("cpt", "h100x8", "remat=full,grad_accum_steps=8", 65.2),
    ("cpt", "h100x8", "remat=full,grad_accum_steps=16", 46.9),
    ("cpt", "h100x8", "mesh.data=2,mesh.fsdp=4,remat=full,grad_accum_steps=16", 76.3),
    ("cpt", "h100x8", "mesh.fsdp=4,mesh.tensor=2,remat=full,grad_accum_steps=16", 60.8),
    ("sft", "h100x8", "remat=full,grad_accum_steps=8", 37.6),
    ("sft", "h100x8", "remat=dots_no_batch,grad_accum_steps=8", 93.3),
    ("sft", "h100x8", "mesh.fsdp=4,mesh.tensor=2,remat=dots_no_batch,grad_accum_steps=8", 105.6),
    ("sft", "h100x8", "mesh.data=2,mesh.fsdp=4,remat=full,grad_accum_steps=8", 66.4),
    ("cpt", "h100x16", "mesh.fsdp=16,remat=full,grad_accum_steps=8", 32.9),
    ("cpt", "h100x16", "mesh.data=2,mesh.fsdp=8,remat=full,grad_accum_steps=4", 65.2),
    ("cpt", "h100x16", "mesh.fsdp=16,remat=dots_no_batch,grad_accum_steps=16", 80.1),
    ("cpt", "h100x16", "mesh.fsdp=4,mesh.tensor=4,remat=full,grad_accum_steps=8", 73.9),
    ("dpo", "h100x16", "mesh.fsdp=16,remat=full,grad_accum_steps=1", 52.4),
    ("cpt", "a100x8", "remat=full,grad_accum_steps=16", 46.2),
    ("sft", "a100x8", "remat=dots_no_batch,grad_accum_steps=8", 93.8),
    ("cpt", "b200x8", "remat=full,grad_accum_steps=4", 101.2),
    ("sft", "b200x8", "remat=full,grad_accum_steps=1", 104.5),
)
# The device whose factor is 1 in a fitted table.
BASE_DEVICE = {"tpu": "tpu-v5p", "gpu": "h100"}


@dataclasses.dataclass
class Sample:
    name: str
    device: str
    remat: str
    terms: dict[str, float]  # plan.activation_terms
    state: int  # the planner's exact bytes: params, optimizer, a frozen reference
    planned: int  # the planner's total
    compiled: int  # the compiled peak


def sample(name: str, run, config: ModelConfig, device: str, chips: int, compiled: int) -> Sample:
    est = plan.plan(run, config, device, chips)
    terms = plan.activation_terms(run, config, est.mesh, est.per_device["gradients"], flash=True)
    state = sum(v for k, v in est.per_device.items() if k in ("params", "optimizer", "reference"))
    return Sample(name, device, run.remat, terms, state, est.total, compiled)


def small_runs():
    for name, b, t in STEPS:
        for remat in REMATS:
            c = base_config()
            c.batch_size, c.seq_len, c.remat, c.dtype = b, t, remat, "bfloat16"
            c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
            yield f"{name} {b}x{t}", MODELS[name], c


def big_samples(platform: str = "tpu") -> list[Sample]:
    out = []
    for task, name, overrides, peak_gib in (GPU_BIG_STEPS if platform == "gpu" else BIG_STEPS):
        run = task_config(task, overrides)
        device, chips = plan.parse_device(name)
        validate(run, chips)
        out.append(sample(f"10.7B {task} {name} {overrides}", run, resolve_model(run).config, device, chips,
                          int(peak_gib * GiB)))
    return out


def fit(samples: list[Sample], rounds: int = 30, base_device: str = "tpu-v5p"):
    """Per remat policy, coefficients of plan's terms; per TPU generation (or GPU), one factor
    on them (base_device = 1): alternating bounded least squares on the relative error of
    the total."""
    names = list(samples[0].terms)
    factor = {s.device: 1.0 for s in samples}
    table = {}
    for _ in range(rounds):
        for remat in REMATS:
            picked = [s for s in samples if s.remat == remat]
            a = np.array([[s.terms[k] * factor[s.device] for k in names] for s in picked], float)
            y = np.array([s.compiled for s in picked], float)
            state = np.array([s.state for s in picked], float)
            lower = [LOWER_BOUNDS[remat].get(k, 0.0) for k in names]
            upper = [C0_MAX_MIB if k == "c0" else np.inf for k in names]
            coef = lsq_linear(a / y[:, None], 1 - state / y, bounds=(lower, upper)).x
            coef[a.max(axis=0) == 0] = 0.0  # terms that are zero here (s, s1 under splash)
            table[remat] = dict(zip(names, coef))
        for device in factor:
            picked = [s for s in samples if s.device == device]
            act = np.array([sum(table[s.remat][k] * s.terms[k] for k in names) / s.compiled for s in picked])
            rest = np.array([1 - s.state / s.compiled for s in picked])
            factor[device] = float(act @ rest / (act @ act))
        base = factor.get(base_device, 1.0)
        factor = {k: v / base for k, v in factor.items()}
    return table, factor


def predicted(s: Sample, table, factor) -> float:
    return s.state + factor[s.device] * sum(table[s.remat][k] * v for k, v in s.terms.items())


def main(c) -> None:
    compiled_plan.without_persistent_cache()
    slices = {name: plan.parse_device(name) for name in split_list(c.devices)}  # bad names: one line, before output
    platforms = {CHIPS[device].platform if device in CHIPS else "cpu" for device, _ in slices.values()}
    if len(platforms) != 1 or platforms & {"cpu"}:
        raise SolarError(f"--config.devices: TPU slices or GPU hosts, one platform at a time; got {c.devices}")
    platform = platforms.pop()
    samples = []
    print(f"{'step':26s} {'slice':12s} {'remat':14s} {'compiled MiB':>13s} {'planner MiB':>12s}  error", flush=True)
    for name_slice, (device, chips) in slices.items():
        for name, config, run in small_runs():
            p = compiled_plan.compile_plan(run, config, device, chips)
            s = sample(name, run, config, device, chips, p.peak_bytes)
            samples.append(s)
            print(f"{name:26s} {name_slice:12s} {run.remat:14s} {s.compiled / 2**20:13.1f} {s.planned / 2**20:12.1f} "
                  f"{s.planned / s.compiled - 1:+6.1%}", flush=True)
    worst = max(abs(s.planned / s.compiled - 1) for s in samples)
    print(f"largest relative error of the planner's total against the compiled peak: {worst:.1%}")
    if c.fit:
        big = big_samples(platform)
        table, factor = fit(samples + big, base_device=BASE_DEVICE[platform])
        errors = [predicted(s, table, factor) / s.compiled - 1 for s in samples + big]
        print(f"refitted on these {len(samples)} steps and {len(big)} 10.7B steps: errors {min(errors):+.1%} to "
              f"{max(errors):+.1%}")
        prefix = platform.upper()
        print(f"{prefix}_ACTIVATION_COEFFICIENTS = {{")
        for remat, coef in table.items():
            print(f"    {remat!r}: {{{', '.join(f'{k!r}: {v:.3f}' for k, v in coef.items() if k not in ('s', 's1'))}}},")
        print("}")
        name = "TPU_GENERATION_FACTOR" if platform == "tpu" else "GPU_FACTOR"
        print(f"{name} = {{" + ", ".join(f"{k!r}: {v:.3f}" for k, v in sorted(factor.items())) + "}")
