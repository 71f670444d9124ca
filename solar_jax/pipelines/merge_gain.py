"""python -m solar_jax.reproduce --config=configs/reproduce.py:merge_gain --config.output_dir=OUT

SOLAR's claim about merging, tested where it can show: two candidates trained apart from
one base, each on its own skill, then merged. Writes OUT/merge_gain.json, merge_gain.md and
merge_gain.png; every number comes from this run.

  base         model_dir (a continued-pretrained model; "" = the real model)
  candidate A  SFT on Synth. Math-Instruct (then DPO on Math-Alignment if dpo_a.num_steps > 0)
  candidate B  SFT on Python-docs QA (data/docs_qa.py: "what does X do" -> the docstring)
  skills       held-out loss on each skill's held-out split (response tokens only), and
               greedy exact match on held-out math problems (the only checkable answers)
  merges       Average(a, 1 - a), SLERP(t), task arithmetic, TIES, DARE-TIES and DARE-linear
               against the base, each built by `python -m solar_jax.merge`'s own code
               (configs/merge.py's keys -> pipelines/merging.py, which the command calls)
  gain kept    for a model M: (L_base - L_M) / (L_base - L_candidate) on that candidate's
               skill (1 = all of the candidate's improvement, 0 = none)
How far apart the candidates are is reported in weight space too: per-tensor cosine of A
and B (SLERP falls back to lerp above 0.9995), and the norm of each task vector.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from solar_jax.config_files import floats, load_config
from solar_jax.errors import SolarError
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.pipelines.merging import merge_dirs, spec_from_config
from solar_jax.pipelines.recipe import fresh_output_dir, output_file, resolve_model_dir, stage_config
from solar_jax.pipelines.stage_eval import heldout_loss, math_exact_match
from solar_jax.surgery.merge_math import DOT_THRESHOLD
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import docs_qa, sft_data, synth_math
from solar_jax.training.loop import train_and_evaluate
from solar_jax.weights import hf
from solar_jax.weights.outdir import check_output_dir, publish_output_dir, writes_output_dir

METHODS = ("average", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")


@dataclasses.dataclass
class Skill:
    """One skill's held-out set, as model batches, plus its checkable problems (if any)."""

    name: str
    batches: list[dict[str, np.ndarray]]
    problems: list[dict]  # {question, answer}; empty when answers are not checkable


def write_docs_qa(out: Path, eval_fraction: float) -> tuple[str, str, int, int]:
    """The docs QA rows as JSONL ({prompt, completion}), as a user's SFT files would be."""
    train, held = docs_qa.generate(eval_fraction)
    paths = out / "docs_qa_train.jsonl", out / "docs_qa_heldout.jsonl"
    for path, rows in zip(paths, (train, held)):
        path.write_text("".join(json.dumps(dict(prompt=r["prompt"], completion=r["completion"])) + "\n" for r in rows))
    return str(paths[0]), str(paths[1]), len(train), len(held)


def skill_batches(rows, tokenizer, c) -> list[dict[str, np.ndarray]]:
    examples, _ = sft_data.sft_examples(rows[: c.eval.examples], c.template, tokenizer, c.seq_len)
    if not examples:
        raise SolarError("no held-out example fits seq_len")
    return [sft_data.to_model(b) for b in sft_data.eval_batches(examples, c.seq_len, c.eval.batch_size)]


def build_skills(c, tokenizer, docs_files: tuple[str, str]) -> dict[str, Skill]:
    """The held-out splits the candidates' own SFT runs hold out (same generator, seed, files)."""
    _, math_rows = sft_data.load_split_rows("", "", 0.0, c.seed, "synth_math", "sft", c.num_builtin)
    _, held = synth_math.generate(c.num_builtin, max(8, c.num_builtin // 10), c.seed)
    problems = [dict(question=p["rephrased_question"], answer=p["answer"]) for p in held[: c.eval.math_problems]]
    _, docs_rows = sft_data.load_split_rows(*docs_files, 0.0, c.seed, "", "sft")
    return dict(math=Skill("math", skill_batches(math_rows, tokenizer, c), problems),
                docs=Skill("docs", skill_batches(docs_rows, tokenizer, c), []))


def score(model_dir: str, skills: dict[str, Skill], c) -> dict[str, float]:
    model, tokenizer = load_for_eval(model_dir)
    scores = {f"{s.name}_loss": heldout_loss(model, s.batches) for s in skills.values()}
    lm = LanguageModel(model, tokenizer, c.eval.batch_size)
    for s in skills.values():
        if s.problems:
            scores[f"{s.name}_exact_match"] = math_exact_match(lm, s.problems, c.template, c.eval.max_new_tokens)[0]
    return scores


def sft_configs(c, base_dir: str, out: Path, docs_files: tuple[str, str]) -> dict[str, Any]:
    """The candidates' SFT run configs (configs/sft.py with the same steps, batch and rate):
    a on the built-in Synth. Math-Instruct, b on the docs QA files."""
    common = dict(model_dir=base_dir, num_steps=c.sft.num_steps, batch_size=c.sft.batch_size, seq_len=c.seq_len,
                  learning_rate=c.sft.learning_rate, warmup_steps=c.sft.warmup_steps, template=c.template,
                  eval_every=c.sft.num_steps, eval_batches=2, seed=c.seed)
    runs = dict(a=stage_config("sft.py", common, workdir=str(out / "candidate_a"), num_builtin=c.num_builtin),
                b=stage_config("sft.py", common, workdir=str(out / "candidate_b")))
    runs["b"].data.train_files, runs["b"].data.eval_files = docs_files
    return runs


def dpo_config(c, model_dir: str, out: Path):
    """Candidate A's optional DPO on Synth. Math-Alignment (configs/dpo.py)."""
    return stage_config("dpo.py", dict(c.dpo_a), model_dir=model_dir, workdir=str(out / "candidate_a_dpo"),
                        seq_len=c.seq_len, template=c.template, seed=c.seed, num_builtin=c.num_builtin,
                        eval_every=c.dpo_a.num_steps, eval_batches=2)


def _train(cfg) -> dict[str, Any]:
    result = train_and_evaluate(cfg, cfg.workdir, verbose=False)
    shutil.rmtree(Path(cfg.workdir) / "checkpoints", ignore_errors=True)  # orbax made it; empty (checkpoint_every=0)
    return result


def train_candidates(c, base_dir: str, out: Path, docs_files: tuple[str, str]) -> dict[str, str]:
    """SFT (and DPO) runs from the base; their HF exports are the candidates."""
    dirs = {}
    for name, cfg in sft_configs(c, base_dir, out, docs_files).items():
        start = time.perf_counter()
        result = _train(cfg)
        dirs[name] = result["export_dir"]
        print(f"candidate {name.upper()}: {c.sft.num_steps} SFT steps on "
              f"{'Synth. Math-Instruct' if name == 'a' else 'Python-docs QA'}, final loss "
              f"{result.get('loss', float('nan')):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    if c.dpo_a.num_steps > 0:
        dirs["a"] = _train(dpo_config(c, dirs["a"], out))["export_dir"]
        print(f"candidate A: + {c.dpo_a.num_steps} DPO steps on Synth. Math-Alignment", flush=True)
    return dirs


def weight_distance(base_dir: str, a_dir: str, b_dir: str) -> dict[str, Any]:
    """How far apart the candidates are: per-tensor cos(A, B) (what SLERP sees), and the task
    vectors tau = candidate - base (global L2 norms, relative to the base's, their cosine)."""
    config = ModelConfig.from_hf_config(hf.read_hf_config(base_dir))
    base, a, b = (model_lib.flat_params(hf.load_hf_params(d, config)) for d in (base_dir, a_dir, b_dir))
    cos_ab, sq = [], dict(base=0.0, a=0.0, b=0.0, ab=0.0)
    for key in base:
        x0, xa, xb = (np.asarray(t[key], np.float64) for t in (base, a, b))
        for layer in range(xa.shape[0]) if key.startswith("layers/") else [None]:
            va, vb = (xa[layer], xb[layer]) if layer is not None else (xa, xb)
            cos_ab.append(float(np.vdot(va, vb) / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-30)))
        ta, tb = xa - x0, xb - x0
        sq["base"] += float(np.vdot(x0, x0))
        sq["a"] += float(np.vdot(ta, ta))
        sq["b"] += float(np.vdot(tb, tb))
        sq["ab"] += float(np.vdot(ta, tb))
    cos_ab = np.asarray(cos_ab)
    return dict(tensors=len(cos_ab), cos_min=float(cos_ab.min()), cos_median=float(np.median(cos_ab)),
                slerp_lerp_share=float(np.mean(np.abs(cos_ab) > DOT_THRESHOLD)),
                task_vector_norm_a=sq["a"] ** 0.5, task_vector_norm_b=sq["b"] ** 0.5,
                relative_norm_a=(sq["a"] / sq["base"]) ** 0.5, relative_norm_b=(sq["b"] / sq["base"]) ** 0.5,
                task_vector_cos=sq["ab"] / max((sq["a"] * sq["b"]) ** 0.5, 1e-30))


def merge_plan(c, base: str, a: str, b: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, method, configs/merge.py keys) for every merge of A and B."""
    plan = []
    for w in floats(c.average_weights, "average_weights"):
        if 0 < w < 1:  # 1 and 0 are the candidates themselves
            plan.append((f"average a={w:g}", "average", dict(method="linear", model_dir=f"{a},{b}",
                                                             weights=f"{w},{1 - w}")))
    for t in floats(c.slerp_t, "slerp_t"):
        plan.append((f"slerp t={t:g}", "slerp", dict(method="slerp", model_dir=f"{a},{b}", base=a, t=str(t))))
    for lam in floats(c.task_arithmetic_weights, "task_arithmetic_weights"):
        plan.append((f"task arithmetic w={lam:g}", "task_arithmetic",
                     dict(method="task_arithmetic", base=base, model_dir=f"{a},{b}", weights=f"{lam},{lam}")))
    for method in ("ties", "dare_ties", "dare_linear"):
        for density in floats(c.densities, "densities"):
            plan.append((f"{method.replace('_', '-')} d={density:g}", method,
                         dict(method=method, base=base, model_dir=f"{a},{b}", weights="1,1", density=str(density),
                              seed=c.seed)))
    return plan


def build_merge(keys: dict[str, Any], output_dir: Path) -> str:
    """The merge command's own path: configs/merge.py with these keys."""
    mc = load_config("merge.py")
    for k, v in keys.items():
        mc[k] = v
    dirs, spec = spec_from_config(mc)
    merge_dirs(dirs, spec, str(output_dir), dtype=mc.dtype, max_shard_size=mc.max_shard_size, progress=False)
    return str(output_dir)


def gains(entry: dict[str, float], base: dict[str, float], a: dict[str, float], b: dict[str, float]) -> dict:
    """Share of each candidate's improvement over the base that a model keeps, on that
    candidate's skill (losses; exact match where the candidate improved it)."""
    def kept(key, cand, lower_better=True):
        gain = (base[key] - cand[key]) if lower_better else (cand[key] - base[key])
        if gain <= 0:
            return None
        return ((base[key] - entry[key]) if lower_better else (entry[key] - base[key])) / gain
    out = dict(kept_a=kept("math_loss", a), kept_b=kept("docs_loss", b))
    if "math_exact_match" in entry:
        out["kept_a_exact_match"] = kept("math_exact_match", a, lower_better=False)
    return out


def pareto(models: dict[str, dict]) -> list[str]:
    """The models no other beats on both skill losses (lower is better)."""
    names = list(models)
    front = []
    for n in names:
        m = models[n]
        dominated = any(models[o]["math_loss"] <= m["math_loss"] and models[o]["docs_loss"] <= m["docs_loss"]
                        and (models[o]["math_loss"], models[o]["docs_loss"]) != (m["math_loss"], m["docs_loss"])
                        for o in names if o != n)
        if not dominated:
            front.append(n)
    return front


@writes_output_dir
def run(c) -> dict[str, Any]:
    for key in ("average_weights", "slerp_t", "task_arithmetic_weights", "densities"):
        floats(c[key], key)  # bad input: one line before any work
    check_output_dir(c.output_dir, c.overwrite)
    base_dir = str(resolve_model_dir(c.model_dir))
    out = fresh_output_dir(c.output_dir, c.overwrite)
    t0 = time.perf_counter()
    tokenizer = tokenizer_lib.load_tokenizer("", base_dir)
    docs_train, docs_held, n_train, n_held = write_docs_qa(out, c.docs_eval_fraction)
    skills = build_skills(c, tokenizer, (docs_train, docs_held))
    cand = train_candidates(c, base_dir, out, (docs_train, docs_held))
    results: dict[str, Any] = dict(docs_qa=dict(train=n_train, heldout=n_held),
                                   distance=weight_distance(base_dir, cand["a"], cand["b"]), models={})
    d = results["distance"]
    print(f"candidates apart: per-tensor cos(A, B) median {d['cos_median']:.6f} (min {d['cos_min']:.6f}; "
          f"{d['slerp_lerp_share']:.0%} of tensors above SLERP's lerp threshold); task vectors |A - base| "
          f"{d['relative_norm_a']:.2%}, |B - base| {d['relative_norm_b']:.2%} of |base|, cosine "
          f"{d['task_vector_cos']:.3f}", flush=True)
    models = results["models"]
    for name, path, method in (("base", base_dir, "base"), ("candidate A (math)", cand["a"], "candidate"),
                               ("candidate B (docs)", cand["b"], "candidate")):
        models[name] = dict(method=method, **score(path, skills, c))
    plan = merge_plan(c, base_dir, cand["a"], cand["b"])
    for name, method, keys in plan:
        target = out / "merges" / name.replace(" ", "_").replace("=", "")
        models[name] = dict(method=method, merge_keys=keys, **score(build_merge(keys, target), skills, c))
        shutil.rmtree(target)
    base, a, b = (models[k] for k in ("base", "candidate A (math)", "candidate B (docs)"))
    for name, m in models.items():
        m.update(gains(m, base, a, b))
        print(f"{name}: math loss {m['math_loss']:.4f}, docs loss {m['docs_loss']:.4f}, math exact match "
              f"{m.get('math_exact_match', float('nan')):.3f}; kept {_pct(m['kept_a'])} of A's gain, "
              f"{_pct(m['kept_b'])} of B's", flush=True)
    results["pareto"] = pareto(models)
    results["verdict"] = verdict(results, c.keep_threshold)
    results["seconds"] = time.perf_counter() - t0
    results["settings"] = json.loads(c.to_json_best_effort())
    (out / "merge_gain.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "merge_gain.md").write_text(report(results) + "\n")
    plot(results, out / "merge_gain.png")
    print(results["verdict"], flush=True)
    publish_output_dir(out, c.output_dir)
    print(f"done in {results['seconds'] / 60:.1f} min: {output_file(c.output_dir, out, 'merge_gain.md')}", flush=True)
    return results


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def verdict(results: dict[str, Any], threshold: float) -> str:
    """One line: does a merge keep >= threshold of both candidates' gains, and which does best."""
    merges = {n: m for n, m in results["models"].items() if m["method"] in METHODS}
    both = {n: min(m["kept_a"], m["kept_b"]) for n, m in merges.items()
            if m["kept_a"] is not None and m["kept_b"] is not None}
    if not both:
        return "no verdict: a candidate did not improve on its own skill over the base"
    best = max(both, key=both.get)
    keeps = [n for n, v in both.items() if v >= threshold]
    head = (f"{len(keeps)} of {len(merges)} merges keep at least {threshold:.0%} of both candidates' gains"
            if keeps else f"no merge keeps {threshold:.0%} of both candidates' gains")
    m = merges[best]
    return (f"{head}; best: {best} (keeps {_pct(m['kept_a'])} of A's math gain and {_pct(m['kept_b'])} of B's "
            f"docs gain)")


def report(results: dict[str, Any]) -> str:
    d = results["distance"]
    lines = ["## Merging candidates trained apart", "",
             f"Per-tensor cosine of A and B: median {d['cos_median']:.6f}, min {d['cos_min']:.6f} "
             f"({d['slerp_lerp_share']:.0%} of {d['tensors']} tensors above SLERP's lerp threshold "
             f"{DOT_THRESHOLD}). Task vectors: |A - base| = {d['relative_norm_a']:.2%} and |B - base| = "
             f"{d['relative_norm_b']:.2%} of |base|, cosine {d['task_vector_cos']:.3f}.", "",
             "| model | math loss | docs loss | math exact match | A's gain kept | B's gain kept | Pareto |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for name, m in results["models"].items():
        em = f"{m['math_exact_match']:.3f}" if "math_exact_match" in m else "n/a"
        lines.append(f"| {name} | {m['math_loss']:.4f} | {m['docs_loss']:.4f} | {em} | {_pct(m['kept_a'])} "
                     f"| {_pct(m['kept_b'])} | {'yes' if name in results['pareto'] else ''} |")
    lines += ["", results["verdict"] + "."]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    markers = dict(base="s", candidate="*", average="o", slerp="D", task_arithmetic="^", ties="v",
                   dare_ties="<", dare_linear=">")
    for i, method in enumerate(markers):
        group = [(n, m) for n, m in models.items() if m["method"] == method]
        if group:
            ax.scatter([m["math_loss"] for _, m in group], [m["docs_loss"] for _, m in group], marker=markers[method],
                       s=120 if method == "candidate" else 50, color=f"C{i}", label=method.replace("_", " "))
            for n, m in group:
                ax.annotate(n.split(" (")[0], (m["math_loss"], m["docs_loss"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    front = sorted((models[n]["math_loss"], models[n]["docs_loss"]) for n in results["pareto"])
    ax.plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
    ax.set_xlabel("math held-out loss (Synth. Math-Instruct; lower is better)")
    ax.set_ylabel("docs held-out loss (Python-docs QA; lower is better)")
    ax.set_title("skills of the base, the candidates and their merges")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
