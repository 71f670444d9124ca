"""python -m solar_jax.reproduce --config=configs/reproduce.py --config.recipe_dir=RECIPE_OUT

Measures, at small scale, what the SOLAR paper says about its method (configs/reproduce.py
says how), and writes OUT/reproduce.json, reproduce.md, recovery.png and merging.png:
  recovery  the up-scaled model starts worse than the base and continued pretraining brings
            it back: held-out loss against steps, and the first step at or below the base
  seam      m = 8 against plain duplication (m = 0) and other m, same token budget
  merging   Average(a, 1 - a) over a, and SLERP, of the two DPO candidates
Every number comes from this run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from solar_jax.errors import SolarError
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.models.config import ModelConfig
from solar_jax.pipelines.recipe import build_stage_data
from solar_jax.pipelines.recipe import fresh_output_dir
from solar_jax.pipelines.recipe import resolve_model_dir
from solar_jax.pipelines.recipe import stage_config
from solar_jax.pipelines.stage_eval import evaluate_stage
from solar_jax.pipelines.stage_eval import heldout_loss
from solar_jax.surgery import merge, streaming
from solar_jax.surgery import upscale
from solar_jax.training import data as data_lib
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.metrics import read_metrics
from solar_jax.weights import hf
from solar_jax.weights.outdir import check_output_dir


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step where the eval loss is at or below target, interpolated between eval
    points; None if never."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            if l0 <= target:
                return float(s0)
            return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SolarError(f"{name} must be comma-separated numbers, got {text!r}") from None


def run(c) -> dict[str, Any]:
    seam_m = [int(m) for m in _floats(c.seam_m, "seam_m")]
    weights = _floats(c.average_weights, "average_weights")
    if c.recipe_dir and not all((Path(c.recipe_dir) / d / "hf" / "config.json").exists() for d in ("dpo_a", "dpo_b")):
        raise SolarError(f"recipe_dir {c.recipe_dir} has no dpo_a/hf and dpo_b/hf (run solar_jax.recipe first)")
    check_output_dir(c.output_dir, c.overwrite)
    model_dir = resolve_model_dir(c.model_dir)
    base = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    for m in seam_m:
        upscale.solar_slices(base.num_layers, m)  # checks m before any work
    out = fresh_output_dir(c.output_dir, c.overwrite)
    tokenizer = data_lib.load_tokenizer("", str(model_dir))
    t0 = time.perf_counter()
    results: dict[str, Any] = dict(base_layers=base.num_layers, seam={}, merging={})

    # The base model's held-out loss on the batches every CPT run evaluates on.
    probe = stage_config("cpt.py", c.cpt, model_dir=str(model_dir), upscale_m=-1, workdir=str(out / "unused"))
    data = build_stage_data(probe, tokenizer, c.eval, c.eval.num_builtin)

    results["base_heldout_loss"] = heldout_loss(load_for_eval(str(model_dir))[0], data.loss_batches)
    print(f"base ({base.num_layers} layers): held-out loss {results['base_heldout_loss']:.4f}", flush=True)

    for m in seam_m:
        name = f"m{m}"
        cfg = stage_config("cpt.py", c.cpt, model_dir=str(model_dir), upscale_m=m, workdir=str(out / name))
        cfg.export.enabled = False
        start = time.perf_counter()
        train_and_evaluate(cfg, cfg.workdir, verbose=False)
        shutil.rmtree(out / name / "checkpoints", ignore_errors=True)
        curve = [(r["step"], r["eval_loss"]) for r in read_metrics(out / name / "metrics.jsonl") if "eval_loss" in r]
        layers = 2 * (base.num_layers - m)
        entry = dict(m=m, layers=layers, curve=curve, initial=curve[0][1], final=curve[-1][1],
                     steps_to_base=steps_to_reach(curve, results["base_heldout_loss"]),
                     seconds=time.perf_counter() - start)
        results["seam"][name] = entry
        reached = entry["steps_to_base"]
        print(f"m={m} ({layers} layers): held-out loss {entry['initial']:.4f} at step 0 -> {entry['final']:.4f} at "
              f"step {curve[-1][0]}; base reached {'at step %.1f' % reached if reached is not None else 'not yet'} "
              f"({entry['seconds']:.0f} s)", flush=True)

    if c.recipe_dir:
        candidates = [str(Path(c.recipe_dir) / d / "hf") for d in ("dpo_a", "dpo_b")]
        specs = [(f"average_{a:g}", a, merge.MergeSpec("linear", 2, model_params=[{"weight": a}, {"weight": 1 - a}]))
                 for a in weights]
        specs.append(("slerp", None, merge.MergeSpec("slerp", 2, base=0, params={"t": c.slerp_t})))
        for name, a, spec in specs:
            target = out / "merges" / name
            if a == 1.0 or a == 0.0:  # the candidates themselves
                path = candidates[0 if a == 1.0 else 1]
            else:
                streaming.merge_hf(candidates, spec, str(target), progress=False)
                path = str(target)
            m = evaluate_stage(path, data, c.eval.batch_size)
            m.pop("examples", None)
            results["merging"][name] = dict(weight_a=a, **m)
            print(f"{name}: held-out loss {m['heldout_loss']:.4f}, math exact match {m['math_exact_match']:.3f}, "
                  f"preference accuracy {m['preference_accuracy']:.3f}", flush=True)
            if target.exists():
                shutil.rmtree(target)
    results["seconds"] = time.perf_counter() - t0
    results["settings"] = json.loads(c.to_json_best_effort())
    (out / "reproduce.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "reproduce.md").write_text(report(results) + "\n")
    plot(results, out)
    print(f"done in {results['seconds'] / 60:.1f} min: {out / 'reproduce.md'}", flush=True)
    return results


def report(results: dict[str, Any]) -> str:
    base = results["base_heldout_loss"]
    lines = ["## Recovery and the seam", "",
             f"Base model ({results['base_layers']} layers): held-out loss {base:.4f}.", "",
             "| up-scaling | layers | loss at step 0 | final loss | steps to reach the base |",
             "|---|---:|---:|---:|---:|"]
    for e in results["seam"].values():
        reach = f"{e['steps_to_base']:.1f}" if e["steps_to_base"] is not None else "not reached"
        label = "plain duplication (m = 0)" if e["m"] == 0 else f"m = {e['m']}"
        lines.append(f"| {label} | {e['layers']} | {e['initial']:.4f} | {e['final']:.4f} | {reach} |")
    if results["merging"]:
        lines += ["", "## Merging the two DPO candidates", "",
                  "| model | held-out loss | math exact match | preference accuracy |", "|---|---:|---:|---:|"]
        for name, e in results["merging"].items():
            label = {"average_1": "candidate A", "average_0": "candidate B"}.get(name, name.replace("_", " a = "))
            lines.append(f"| {label} | {e['heldout_loss']:.4f} | {e['math_exact_match']:.3f} "
                         f"| {e['preference_accuracy']:.3f} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for e in results["seam"].values():
        label = f"m = {e['m']} ({e['layers']} layers)" + (", plain duplication" if e["m"] == 0 else "")
        ax.plot(*zip(*e["curve"]), "o-", ms=3, label=label)
    ax.axhline(results["base_heldout_loss"], color="gray", ls="--", label=f"base ({results['base_layers']} layers)")
    ax.set_xlabel("continued pretraining step")
    ax.set_ylabel("held-out loss")
    ax.set_title("recovery after depth up-scaling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recovery.png", dpi=100)
    plt.close(fig)
    if results["merging"]:
        avg = sorted((e["weight_a"], e) for e in results["merging"].values() if e["weight_a"] is not None)
        slerp = results["merging"].get("slerp")
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, key in zip(axes, ("heldout_loss", "math_exact_match", "preference_accuracy")):
            ax.plot([a for a, _ in avg], [e[key] for _, e in avg], "o-", label="Average(a, 1 - a)")
            if slerp:
                ax.axhline(slerp[key], color="C3", ls="--", label="SLERP t = 0.5")
            ax.set_xlabel("a (weight of candidate A)")
            ax.set_title(key.replace("_", " "))
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "merging.png", dpi=100)
        plt.close(fig)
