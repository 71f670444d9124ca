"""python -m solar_jax.recipe --config=configs/recipe.py[:quick] --config.output_dir=OUT

The whole SOLAR recipe on a real model, one result line per stage, every artefact under OUT:
  base/ (a link to the imported model)   upscaled/   cpt/   sft/   dpo_a/   dpo_b/
  merge_average/   merge_slerp/   final/ (the selected merge, exported in bfloat16)
  results.json   results.md   cpt_loss.png   stages.png
Every number in the table is measured by this run (stage_eval.py says how).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from solar_jax.errors import SolarError
from solar_jax.config_files import load_config
from solar_jax.models.config import ModelConfig
from solar_jax.pipelines.stage_eval import StageData
from solar_jax.pipelines.stage_eval import evaluate_stage
from solar_jax.pipelines.stage_eval import math_prompt
from solar_jax.surgery import merge, streaming
from solar_jax.surgery import upscale
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import synth_math
from solar_jax.data import task_data
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.metrics import plot_loss_curve
from solar_jax.weights import hf, paths
from solar_jax.weights.outdir import check_output_dir, publish_output_dir, staged_output_dir, writes_output_dir
from solar_jax.weights.real_model import ensure_real_model

STAGES = ("base", "upscaled", "cpt", "sft", "dpo_a", "dpo_b", "merge_average", "merge_slerp")
TITLES = {
    "base": "base model", "upscaled": "depth up-scaled", "cpt": "+ continued pretraining", "sft": "+ SFT",
    "dpo_a": "+ DPO candidate A", "dpo_b": "+ DPO candidate B", "merge_average": "Average(0.5, 0.5)",
    "merge_slerp": "SLERP",
}
# Stage-dict keys that live in sub-configs of the run config.
_NESTED = {"num_builtin": "data.num_builtin", "beta": "dpo.beta", "reference": "dpo.reference"}


def stage_config(config_file: str, overrides, **extra):
    """configs/FILE's default run config with a recipe stage's overrides, and no checkpoints:
    a pipeline's stage run is not resumed, the next stage reads its HF export."""
    c = load_config(config_file)
    for key, value in {**dict(overrides), **extra}.items():
        node, *path = _NESTED.get(key, key).split(".")
        if path:
            c[node][path[0]] = value
        else:
            c[node] = value
    c.checkpoint_every = 0
    return c


class _Clock:
    """Times each stage and prints its one result line."""

    def __init__(self, total: int):
        self.total, self.index, self.seconds = total, 0, {}
        self.start = time.perf_counter()

    def run(self, name: str, fn) -> None:
        """fn() -> the stage's result line."""
        self.index += 1
        print(f"[{self.index}/{self.total}] {name} ...", flush=True)
        t0 = time.perf_counter()
        line = fn()
        self.seconds[name] = time.perf_counter() - t0
        print(f"[{self.index}/{self.total}] {name}: {line} ({self.seconds[name]:.0f} s)", flush=True)


def _line(m: dict[str, Any]) -> str:
    return (f"held-out loss {m['heldout_loss']:.4f}, math exact match {m['math_exact_match']:.3f}, "
            f"preference accuracy {m['preference_accuracy']:.3f} ({m['num_layers']} layers)")


def build_stage_data(cpt_c, tokenizer, eval_cfg, num_builtin: int):
    """The held-out CPT batches and the held-out synthetic math problems every stage is scored
    on (eval_cfg: loss_batches, math_problems, pairs, max_new_tokens). The math split is the
    one SFT and DPO runs with data.num_builtin=num_builtin hold out (same generator call, seed)."""
    data = task_data.build(cpt_c, tokenizer)
    batches = [data.to_model(b) for b in data.eval[: eval_cfg.loss_batches]]
    _, held = synth_math.generate(num_builtin, max(8, num_builtin // 10), cpt_c.seed)
    math = [dict(question=p["rephrased_question"], answer=p["answer"]) for p in held[: eval_cfg.math_problems]]
    pairs = synth_math.math_alignment(held)[: eval_cfg.pairs]
    return StageData(batches, math, pairs, template="solar", max_new_tokens=eval_cfg.max_new_tokens)


def resolve_model_dir(model_dir: str) -> Path:
    """An HF dir (a gs:// one read from a local copy), or "" for the real model (fetched on
    first use)."""
    if model_dir:
        return paths.local_copy(model_dir)

    return Path(ensure_real_model())


def fresh_output_dir(out_dir: str, overwrite: bool) -> Path:
    """output_dir, empty: refused if it holds anything, unless overwrite (then cleared). A gs://
    output_dir is written locally first (the stages read each other's files as they go) and
    uploaded by publish_output_dir at the end."""
    if not out_dir:
        raise SolarError("output_dir is required (--config.output_dir=OUT)")
    if paths.is_remote(out_dir):
        return staged_output_dir(out_dir, overwrite)
    out = check_output_dir(out_dir, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def output_file(out_dir: str, out: Path, name: str) -> str:
    """Where a pipeline's file ended up: under the gs:// output_dir once published."""
    return f"{out_dir.rstrip('/')}/{name}" if paths.is_remote(out_dir) else str(out / name)


@writes_output_dir
def run_recipe(r) -> dict[str, Any]:
    check_output_dir(r.output_dir, r.overwrite)
    model_dir = resolve_model_dir(r.model_dir)
    out = fresh_output_dir(r.output_dir, r.overwrite)
    base_config = ModelConfig.from_hf_config(hf.read_hf_config(model_dir))
    (out / "base").symlink_to(model_dir.absolute(), target_is_directory=True)
    tokenizer = tokenizer_lib.load_tokenizer("", str(model_dir))
    cpt_c = stage_config("cpt.py", r.cpt, model_dir=str(out / "upscaled"), upscale_m=-1, workdir=str(out / "cpt"))
    data = build_stage_data(cpt_c, tokenizer, r.eval, r.sft.num_builtin)
    clock = _Clock(len(STAGES) + 1)
    results: dict[str, Any] = dict(stages={}, runs={})

    def scored(name: str, model: Path) -> str:
        results["stages"][name] = evaluate_stage(str(model), data, r.eval.batch_size)
        return _line(results["stages"][name])

    def trained(name: str, c) -> Path:
        result = train_and_evaluate(c, c.workdir, verbose=False)
        shutil.rmtree(Path(c.workdir) / "checkpoints", ignore_errors=True)  # orbax made it; empty (checkpoint_every=0)
        results["runs"][name] = {k: v for k, v in result.items() if isinstance(v, (int, float, str, dict))}
        return Path(result["export_dir"])

    clock.run("base", lambda: scored("base", out / "base"))
    slices = upscale.solar_slices(base_config.num_layers, r.upscale_m)
    clock.run("upscaled", lambda: (streaming.upscale_hf([str(model_dir)], slices, str(out / "upscaled"), progress=False),
                                   scored("upscaled", out / "upscaled"))[1])
    clock.run("cpt", lambda: scored("cpt", trained("cpt", cpt_c)))
    sft_c = stage_config("sft.py", r.sft, model_dir=str(out / "cpt" / "hf"), workdir=str(out / "sft"))
    clock.run("sft", lambda: scored("sft", trained("sft", sft_c)))
    for name in ("dpo_a", "dpo_b"):
        c = stage_config("dpo.py", r[name], model_dir=str(out / "sft" / "hf"), workdir=str(out / name))
        clock.run(name, lambda c=c, name=name: scored(name, trained(name, c)))
    candidates = [str(out / "dpo_a" / "hf"), str(out / "dpo_b" / "hf")]
    average = merge.MergeSpec("linear", 2, model_params=[{"weight": 0.5}, {"weight": 0.5}])
    slerp = merge.MergeSpec("slerp", 2, base=0, params={"t": r.slerp_t})
    for name, spec in (("merge_average", average), ("merge_slerp", slerp)):
        clock.run(name, lambda name=name, spec=spec: (
            streaming.merge_hf(candidates, spec, str(out / name), progress=False), scored(name, out / name))[1])

    def export_final():
        best = max(("merge_average", "merge_slerp"),
                   key=lambda s: (results["stages"][s]["math_exact_match"], results["stages"][s]["preference_accuracy"]))
        config = ModelConfig.from_hf_config(hf.read_hf_config(out / best))
        params = hf.load_hf_params(out / best, config)
        hf.save_hf_params(params, config, out / "final", dtype="bfloat16", source_dir=out / best)
        question = r.sample_question or data.math[0]["question"]
        answer = transformers_answer(out / "final", question, r.eval.max_new_tokens)
        results["final"] = dict(selected=best, dir=str(out / "final"), question=question, transformers_answer=answer)
        return f"{best} -> {out / 'final'} (bfloat16); transformers answers {question!r} with {answer!r}"

    clock.run("export", export_final)
    results["seconds"] = clock.seconds
    results["total_seconds"] = time.perf_counter() - clock.start
    results["settings"] = json.loads(r.to_json_best_effort())
    write_report(out, results)
    publish_output_dir(out, r.output_dir)
    print(f"done in {results['total_seconds'] / 60:.1f} min: {output_file(r.output_dir, out, 'results.md')}", flush=True)
    return results


def transformers_answer(hf_dir: Path, question: str, max_new_tokens: int) -> str:
    """Greedy answer from the exported dir, loaded and run by transformers (torch)."""
    import torch
    import transformers


    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = tok(math_prompt(question, "solar", None), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def results_table(results: dict[str, Any]) -> str:
    lines = ["| stage | layers | held-out loss | math exact match | preference accuracy | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in STAGES:
        m = results["stages"][name]
        lines.append(f"| {TITLES[name]} | {m['num_layers']} | {m['heldout_loss']:.4f} | {m['math_exact_match']:.3f} "
                     f"| {m['preference_accuracy']:.3f} | {results['seconds'].get(name, 0):.0f} |")
    return "\n".join(lines)


def write_report(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    final = results["final"]
    md = ["# SOLAR recipe: results", "", results_table(results), "",
          f"Final model: {final['selected']}, exported to `{final['dir']}` (bfloat16).", "",
          f"transformers, from the export: Q: {final['question']}", "", "```", final["transformers_answer"], "```", "",
          f"Total wall time {results['total_seconds'] / 60:.1f} min; export stage {results['seconds']['export']:.0f} s."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    base_loss = results["stages"]["base"]["heldout_loss"]
    plot_loss_curve(out / "cpt" / "metrics.jsonl", out / "cpt_loss.png", baseline=base_loss,
                    title="continued pretraining of the up-scaled model")
    plot_stages(results, out / "stages.png")


def plot_stages(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(STAGES)
    metrics = (("heldout_loss", "held-out loss"), ("math_exact_match", "math exact match"),
               ("preference_accuracy", "preference accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, label) in zip(axes, metrics):
        values = [results["stages"][n][key] for n in names]
        ax.bar(range(len(names)), values, color=["#888"] * 2 + ["#4a7"] * 4 + ["#c64"] * 2)
        ax.set_xticks(range(len(names)), [TITLES[n] for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
