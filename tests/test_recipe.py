"""The quickstart's --quick mode: the whole recipe on the real model, every stage's artefacts,
a results table computed from the run, and an export that transformers loads."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from solar_jax.pipelines.recipe import STAGES


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, real_model_dir):
    out = tmp_path_factory.mktemp("recipe") / "out"
    env = dict(os.environ, OUT=str(out), XLA_FLAGS="", PYTHONUNBUFFERED="1")
    r = subprocess.run(["bash", "launch/quickstart.sh", "--quick"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def test_quick_recipe_produces_every_stage(quick_run):
    out, stdout = quick_run
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/9] {stage}: held-out loss" in stdout
    for run in ("cpt", "sft", "dpo_a", "dpo_b"):
        assert (out / run / "metrics.jsonl").exists() and (out / run / "hf" / "config.json").exists()
    for d in ("upscaled", "merge_average", "merge_slerp", "final"):
        assert list((out / d).glob("*.safetensors")), d
    for f in ("results.json", "results.md", "cpt_loss.png", "stages.png"):
        assert (out / f).stat().st_size > 0, f
    assert json.loads((out / "upscaled" / "config.json").read_text())["num_hidden_layers"] == 44


def test_results_table_is_computed_from_the_run(quick_run):
    from solar_jax.training.metrics import read_metrics

    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["stages"]) == set(STAGES)
    # The up-scaled model's held-out loss is the CPT run's own step-0 eval of the same batches.
    cpt_step0 = [r for r in read_metrics(out / "cpt" / "metrics.jsonl") if r["step"] == 0][0]["eval_loss"]
    assert abs(results["stages"]["upscaled"]["heldout_loss"] - cpt_step0) < 1e-4
    assert results["stages"]["base"]["num_layers"] == 30 and results["stages"]["merge_slerp"]["num_layers"] == 44
    table = (out / "results.md").read_text()
    for stage in STAGES:
        assert f"{results['stages'][stage]['heldout_loss']:.4f}" in table


def test_the_final_export_loads_and_generates_in_transformers(quick_run):
    import torch
    import transformers

    out, _ = quick_run
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "final"))
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 44
    tok = transformers.AutoTokenizer.from_pretrained(str(out / "final"))
    ids = tok("2 + 2 =", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
    results = json.loads((out / "results.json").read_text())
    assert results["final"]["transformers_answer"].strip()


def test_reproduce_quick_writes_its_tables_from_the_runs(quick_run, tmp_path):
    recipe_out, _ = quick_run
    out = tmp_path / "reproduce"
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "solar_jax.reproduce", "--config=configs/reproduce.py:quick",
                        f"--config.recipe_dir={recipe_out}", f"--config.output_dir={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((out / "reproduce.json").read_text())
    # m = 8, plain duplication, then m = 8's identity init and the diagnostic's seam of 44 layers
    assert [e["layers"] for e in results["seam"].values()] == [44, 60, 44, 44]
    assert results["seam"]["identity"]["initial"] == pytest.approx(results["base_heldout_loss"], abs=1e-4)
    assert results["seam"]["seam"]["mismatch"] <= results["seam"]["m8"]["mismatch"]
    assert results["diagnostic"]["tokens"] == 4 * 64
    for e in results["seam"].values():
        assert [s for s, _ in e["curve"]] == [0, 1, 2]
    assert set(results["merging"]) == {"average_0", "average_0.5", "average_1", "slerp"}
    assert all(e["num_layers"] == 44 for e in results["merging"].values())
    for f in ("reproduce.md", "recovery.png", "merging.png", "seam_vs_recovery.png"):
        assert (out / f).stat().st_size > 0
    table = (out / "reproduce.md").read_text()
    assert f"{results['seam']['m0']['final']:.4f}" in table


def test_steps_to_reach_interpolates_between_eval_points():
    from solar_jax.pipelines.reproduce import steps_to_reach

    curve = [(0, 4.0), (10, 3.0), (20, 2.0)]
    assert steps_to_reach(curve, 2.5) == 15.0
    assert steps_to_reach(curve, 4.5) == 0.0
    assert steps_to_reach(curve, 1.0) is None
