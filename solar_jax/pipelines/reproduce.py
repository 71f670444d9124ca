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

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.models.config import ModelConfig
from solar_jax.pipelines.recipe import build_stage_data
from solar_jax.pipelines.recipe import fresh_output_dir, output_file
from solar_jax.pipelines.recipe import resolve_model_dir
from solar_jax.pipelines.recipe import stage_config
from solar_jax.pipelines.stage_eval import evaluate_stage
from solar_jax.pipelines import seam as seam_report
from solar_jax.pipelines.stage_eval import heldout_loss
from solar_jax.surgery import merge, streaming
from solar_jax.surgery import seam, upscale
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.metrics import read_metrics
from solar_jax.weights import hf, paths
from solar_jax.weights.outdir import check_output_dir, publish_output_dir, writes_output_dir


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


ARMS = ("identity", "scaled", "seam", "llama_pro", "llama_pro_new")


@dataclasses.dataclass
class Arm:
    """One continued-pretraining run from the base: how it is up-scaled."""

    name: str
    label: str
    layers: int
    overrides: dict[str, Any]  # training config keys
    mismatch: float | None = None  # the seam's angular distance (surgery/seam.py), if it has one


def plan_arms(c, n: int, distance: np.ndarray) -> list[Arm]:
    """The m sweep (SOLAR's copy for each m in seam_m), then the named arms at compare_m's
    depth: its identity and scaled inits, the diagnostic's seam, and LLaMA Pro with as many
    new blocks (all trained, or only the new ones)."""
    mismatch = seam.seam_mismatch(distance)
    arms = []
    for m in (int(v) for v in _floats(c.seam_m, "seam_m")):
        upscale.solar_slices(n, m)
        label = "plain duplication (m = 0)" if m == 0 else f"m = {m}"
        arms.append(Arm(f"m{m}", label, 2 * (n - m), dict(upscale_m=m), mismatch.get(m)))
    m = c.compare_m
    names = [a.strip() for a in c.arms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise SolarError(f"unknown arm {unknown[0]!r}; known: {', '.join(ARMS)}")
    if names and not 0 <= m < n / 2:
        raise SolarError(f"compare_m must satisfy 0 <= m < n / 2 (n = {n}), got {m}")
    depth, blocks = 2 * (n - m), n - 2 * m
    for name in names:
        if name in ("identity", "scaled"):
            arms.append(Arm(name, f"m = {m}, init {name}", depth, dict(upscale_m=m, upscale_init=name), mismatch[m]))
        elif name == "seam":
            rec = seam.recommend(distance, depth)
            arms.append(Arm(name, f"the diagnostic's seam {rec.slices}", depth, dict(upscale_slices=rec.slices),
                            rec.mismatch))
        else:
            only_new = name == "llama_pro_new"
            label = f"LLaMA Pro, {blocks} identity blocks" + (", only they train" if only_new else "")
            arms.append(Arm(name, label, n + blocks, dict(upscale_slices=f"expand:{blocks}", upscale_init="identity",
                                                           upscale_train="new" if only_new else "all")))
    return arms


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (average ranks for ties; inf ranks last); None under 3 points or when
    one side is constant."""
    if len(x) < 3:
        return None

    def ranks(v):
        v = np.asarray(v, np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def seam_correlations(entries: list[dict]) -> dict[str, float | None]:
    """Over the m sweep: does a larger seam mismatch mean a worse start and slower recovery?"""
    sweep = [e for e in entries if e["name"].startswith("m") and e["mismatch"] is not None]
    mismatch = [e["mismatch"] for e in sweep]
    never = float("inf")
    return dict(
        points=len(sweep),
        initial_loss=rank_correlation(mismatch, [e["initial"] for e in sweep]),
        final_loss=rank_correlation(mismatch, [e["final"] for e in sweep]),
        steps_to_base=rank_correlation(mismatch, [never if e["steps_to_base"] is None else e["steps_to_base"]
                                                  for e in sweep]))


def recipe_candidates(recipe_dir: str) -> list[str]:
    """A recipe run's two DPO candidates (dpo_a/hf, dpo_b/hf) as local dirs; a gs:// recipe
    dir's two are copied into the cache (nothing else of the run is read)."""
    dirs = []
    for name in ("dpo_a", "dpo_b"):
        url = f"{recipe_dir.rstrip('/')}/{name}/hf"
        try:
            local = paths.local_copy(url)
        except (FileNotFoundError, SolarError):
            local = None
        if local is None or not (local / "config.json").exists():
            raise SolarError(f"recipe_dir {recipe_dir} has no dpo_a/hf and dpo_b/hf (run solar_jax.recipe first)")
        dirs.append(str(local))
    return dirs


@writes_output_dir
def run(c) -> dict[str, Any]:
    weights = _floats(c.average_weights, "average_weights")
    candidates = recipe_candidates(c.recipe_dir) if c.recipe_dir else []
    check_output_dir(c.output_dir, c.overwrite)
    model_dir = resolve_model_dir(c.model_dir)
    base = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    n = base.num_layers
    plan_arms(c, n, np.zeros((n + 1, n + 1)))  # checks seam_m, arms and compare_m before any work
    out = fresh_output_dir(c.output_dir, c.overwrite)
    tokenizer = tokenizer_lib.load_tokenizer("", str(model_dir))
    t0 = time.perf_counter()
    results: dict[str, Any] = dict(base_layers=n, seam={}, merging={})

    # The base model's held-out loss on the batches every CPT run evaluates on, and its seam
    # diagnostics (surgery/seam.py) on the built-in corpus.
    probe = stage_config("cpt.py", c.cpt, model_dir=str(model_dir), upscale_m=-1, workdir=str(out / "unused"))
    data = build_stage_data(probe, tokenizer, c.eval, c.eval.num_builtin)
    base_model = load_for_eval(str(model_dir))[0]
    results["base_heldout_loss"] = heldout_loss(base_model, data.loss_batches)
    start = time.perf_counter()
    cos, tokens = seam.mean_cosines(base_model, seam_report.text_batches(tokenizer, c.diagnostic))
    distance = seam.angular_distance(cos)
    del base_model
    results["diagnostic"] = dict(tokens=tokens, seconds=time.perf_counter() - start,
                                 seam_mismatch={str(m): d for m, d in seam.seam_mismatch(distance).items()})
    print(f"base ({n} layers): held-out loss {results['base_heldout_loss']:.4f}; seam diagnostics on "
          f"{tokens} tokens in {results['diagnostic']['seconds']:.0f} s", flush=True)

    for arm in plan_arms(c, n, distance):
        cfg = stage_config("cpt.py", c.cpt, model_dir=str(model_dir), upscale_m=-1, workdir=str(out / arm.name))
        for key, value in arm.overrides.items():
            cfg[key] = value
        cfg.export.enabled = False
        start = time.perf_counter()
        train_and_evaluate(cfg, cfg.workdir, verbose=False)
        shutil.rmtree(out / arm.name / "checkpoints", ignore_errors=True)  # orbax made it; empty (checkpoint_every=0)
        curve = [(r["step"], r["eval_loss"]) for r in read_metrics(out / arm.name / "metrics.jsonl") if "eval_loss" in r]
        entry = dict(name=arm.name, label=arm.label, layers=arm.layers, overrides=arm.overrides,
                     mismatch=arm.mismatch, curve=curve, initial=curve[0][1], final=curve[-1][1],
                     steps_to_base=steps_to_reach(curve, results["base_heldout_loss"]),
                     seconds=time.perf_counter() - start)
        entry["m"] = arm.overrides.get("upscale_m")
        results["seam"][arm.name] = entry
        reached = entry["steps_to_base"]
        print(f"{arm.label} ({arm.layers} layers): held-out loss {entry['initial']:.4f} at step 0 -> "
              f"{entry['final']:.4f} at step {curve[-1][0]}; base reached "
              f"{'at step %.1f' % reached if reached is not None else 'not yet'} ({entry['seconds']:.0f} s)", flush=True)
    results["seam_correlation"] = seam_correlations(list(results["seam"].values()))

    if c.recipe_dir:
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
    publish_output_dir(out, c.output_dir)
    print(f"done in {results['seconds'] / 60:.1f} min: {output_file(c.output_dir, out, 'reproduce.md')}", flush=True)
    return results


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(results: dict[str, Any]) -> str:
    base = results["base_heldout_loss"]
    lines = ["## Recovery and the seam", "",
             f"Base model ({results['base_layers']} layers): held-out loss {base:.4f}.", "",
             "| up-scaling | layers | seam mismatch | loss at step 0 | final loss | steps to reach the base |",
             "|---|---:|---:|---:|---:|---:|"]
    for e in results["seam"].values():
        reach = f"{e['steps_to_base']:.1f}" if e["steps_to_base"] is not None else "not reached"
        lines.append(f"| {e['label']} | {e['layers']} | {_fmt(e['mismatch'], 3)} | {e['initial']:.4f} "
                     f"| {e['final']:.4f} | {reach} |")
    corr = results.get("seam_correlation") or {}
    if corr.get("points", 0) >= 3:
        lines += ["", f"Spearman rank correlation of the seam mismatch with, over the {corr['points']} values of m: "
                  f"loss at step 0 {_fmt(corr['initial_loss'], 2)}, final loss {_fmt(corr['final_loss'], 2)}, "
                  f"steps to reach the base {_fmt(corr['steps_to_base'], 2)} (not reached ranks last)."]
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

    sweep = [e for e in results["seam"].values() if e["name"].startswith("m")]
    others = [e for e in results["seam"].values() if not e["name"].startswith("m")]
    panels = [("SOLAR's seam, each m (copy init)", sweep)]
    if others:
        compare = [e for e in sweep if e["m"] == results["settings"].get("compare_m")]
        panels.append(("the same depth, other up-scalings", compare + others))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.4), squeeze=False)
    for ax, (title, entries) in zip(axes[0], panels):
        for e in entries:
            ax.plot(*zip(*e["curve"]), "o-", ms=3, label=f"{e['label']} ({e['layers']} layers)")
        ax.axhline(results["base_heldout_loss"], color="gray", ls="--", label=f"base ({results['base_layers']} layers)")
        ax.set_xlabel("continued pretraining step")
        ax.set_ylabel("held-out loss")
        ax.set_title(title)
        ax.set_ylim(top=min(ax.get_ylim()[1], results["base_heldout_loss"] + 3))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "recovery.png", dpi=100)
    plt.close(fig)
    measured = [e for e in sweep if e["mismatch"] is not None]
    if len(measured) >= 2:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "initial", "held-out loss at step 0"), (axes[1], "final", "final held-out loss")):
            ax.plot([e["mismatch"] for e in measured], [e[key] for e in measured], "o")
            for e in measured:
                ax.annotate(f"m={e['m']}", (e["mismatch"], e[key]), fontsize=8)
            ax.set_xlabel("seam mismatch d(n - m, m) of the base")
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out / "seam_vs_recovery.png", dpi=100)
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
