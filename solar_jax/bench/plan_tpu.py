"""The memory planner against libtpu's compiled memory analysis of the real train step
(plan --compile's path) on a TPU slice, without a TPU. fit=True also prints the
coefficients of plan.TPU_ACTIVATION_COEFFICIENTS fitted to these compiles (bounded least
squares on the relative error, LOWER_BOUNDS below; the committed table also weighs in two
10.7B compiles, see plan.py)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

from solar_jax.models.config import ModelConfig
from solar_jax.training import compiled_plan, plan
from solar_jax.training.run_config import base_config

# head_dim 128 throughout (TPU's lane width; Llama/Mistral's): widths, depths, vocab and
# GQA ratios vary.
MODELS = {
    "d512 L2": ModelConfig(model_type="mistral", vocab_size=4096, hidden_size=512, intermediate_size=1536,
                           num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128, max_position_embeddings=4096),
    "d1024 L3": ModelConfig(model_type="mistral", vocab_size=4096, hidden_size=1024, intermediate_size=3584,
                            num_layers=3, num_heads=8, num_kv_heads=2, head_dim=128, sliding_window=256,
                            max_position_embeddings=4096),
    "d768 L4 v8k": ModelConfig(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_layers=4,
                               num_heads=6, num_kv_heads=6, head_dim=128, max_position_embeddings=4096),
}
BATCHES = ((8, 512), (4, 1024))
MESHES = ((1, 4, 1), (2, 2, 1), (1, 2, 2))
REMATS = ("none", "full", "dots", "dots_no_batch")
# What each policy must keep per layer: full the layer inputs, dots* the projections' outputs,
# none those and the MLP's elementwise outputs.
LOWER_BOUNDS = {"none": dict(d=2, f=3, q=1, g=1), "full": dict(d=1, g=1), "dots": dict(d=2, f=2, q=1, g=1),
                "dots_no_batch": dict(d=2, f=2, q=1, g=1)}


def samples(remats=REMATS):
    for name, config in MODELS.items():
        for b, t in BATCHES:
            for mesh in MESHES:
                if config.num_heads % mesh[2] or config.num_kv_heads % mesh[2]:
                    continue
                for remat in remats:
                    c = base_config()
                    c.batch_size, c.seq_len, c.remat, c.dtype = b, t, remat, "bfloat16"
                    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
                    yield name, config, c


def main(c) -> None:
    compiled_plan.without_persistent_cache()
    device, chips = plan.parse_device(c.device)
    rows = []
    print(f"{'model':12s} {'batch':>9s} {'mesh':>6s} {'remat':>14s} {'compiled MiB':>13s} {'estimate MiB':>13s} ratio",
          flush=True)
    for name, config, run in samples():
        p = compiled_plan.compile_plan(run, config, device, chips)
        mesh = p.mesh
        est = plan.plan(run, config, device, chips)
        grads = est.per_device["gradients"]
        terms = plan.activation_terms(run, config, mesh, grads, flash=True)
        temp = p.memory["temporaries"]
        estimate = est.per_device["activations"] + grads
        rows.append((run.remat, terms, temp, estimate, est.total, p.peak_bytes))
        print(f"{name:12s} {run.batch_size:>4d}x{run.seq_len:<4d} {'x'.join(map(str, mesh)):>6s} {run.remat:>14s} "
              f"{temp / 2**20:13.2f} {estimate / 2**20:13.2f} {estimate / temp:5.2f}  (peak: planner "
              f"{est.total / 2**20:.1f} MiB, compiled {p.peak_bytes / 2**20:.1f})", flush=True)
    worst = max(abs(r[4] / r[5] - 1) for r in rows)
    print(f"largest relative error of the planner's total against the compiled peak: {worst:.1%}")
    if c.fit:
        print("TPU_ACTIVATION_COEFFICIENTS = {")
        for remat in REMATS:
            picked = [r for r in rows if r[0] == remat]
            names = list(picked[0][1])
            a = np.array([[r[1][k] for k in names] for r in picked], float)
            y = np.array([r[2] for r in picked], float)
            lower = np.array([LOWER_BOUNDS[remat].get(k, 0.0) for k in names])
            coef = lsq_linear(a / y[:, None], np.ones(len(y)), bounds=(lower, np.inf)).x
            coef[a.max(axis=0) == 0] = 0.0  # terms that are zero here (s, s1 under splash)
            fitted = a @ coef
            err = np.max(np.abs(fitted / y - 1))
            print(f"    {remat!r}: {{{', '.join(f'{k!r}: {v:.3f}' for k, v in zip(names, coef))}}},  # max err {err:.1%}")
        print("}")
