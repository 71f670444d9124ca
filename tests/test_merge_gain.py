"""The merge-gain arm (pipelines/merge_gain.py): its docs QA set, its arithmetic (gain kept,
Pareto front, verdict), its merges going through the merge command's own path, and the
quick variant on the real model with every artefact."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from solar_jax.config_files import load_config
from solar_jax.pipelines.merging import spec_from_config
from solar_jax.pipelines import merge_gain
from solar_jax.data import docs_qa


def test_docs_qa_is_deterministic_and_split_by_name():
    train, held = docs_qa.generate(0.1)
    again_train, again_held = docs_qa.generate(0.1)
    assert train == again_train and held == again_held
    assert len(train) > 500 and len(held) > 30
    assert not {r["name"] for r in train} & {r["name"] for r in held}
    assert len({r["completion"] for r in train + held}) == len(train) + len(held)  # aliases kept once
    by_name = {r["name"]: r for r in train + held}
    assert by_name["math.gcd"]["completion"].startswith("Greatest Common Divisor")
    assert "`json.dumps`" in by_name["json.dumps"]["prompt"]
    assert all(len(r["completion"]) <= docs_qa.MAX_ANSWER_CHARS for r in train + held)


def test_first_paragraph_skips_signatures_and_cuts_at_a_sentence():
    assert docs_qa.first_paragraph("dumps(obj, *, skipkeys=False)\n\nSerialize obj to a JSON formatted str.") == \
        "Serialize obj to a JSON formatted str."
    assert docs_qa.first_paragraph("short") is None
    long = "This sentence is about twenty-nine. " * 20
    cut = docs_qa.first_paragraph(long)
    assert len(cut) <= docs_qa.MAX_ANSWER_CHARS and cut.endswith(".")


def test_gain_kept_is_measured_from_the_base_to_each_candidate():
    base = dict(math_loss=2.0, docs_loss=3.0, math_exact_match=0.1)
    a = dict(math_loss=1.0, docs_loss=3.2, math_exact_match=0.5)
    b = dict(math_loss=2.1, docs_loss=2.0, math_exact_match=0.1)
    merged = dict(math_loss=1.2, docs_loss=2.5, math_exact_match=0.3)
    g = merge_gain.gains(merged, base, a, b)
    assert g["kept_a"] == pytest.approx(0.8) and g["kept_b"] == pytest.approx(0.5)
    assert g["kept_a_exact_match"] == pytest.approx(0.5)
    assert merge_gain.gains(a, base, a, b)["kept_a"] == 1 and merge_gain.gains(base, base, a, b)["kept_b"] == 0
    worse = dict(math_loss=2.5, docs_loss=3.0, math_exact_match=0.0)
    assert merge_gain.gains(merged, base, worse, b)["kept_a"] is None  # A did not improve: no share


def test_pareto_front_and_verdict():
    models = {
        "base": dict(method="base", math_loss=2.0, docs_loss=3.0, kept_a=0.0, kept_b=0.0),
        "A": dict(method="candidate", math_loss=1.0, docs_loss=3.2, kept_a=1.0, kept_b=-0.2),
        "B": dict(method="candidate", math_loss=2.1, docs_loss=2.0, kept_a=-0.1, kept_b=1.0),
        "avg": dict(method="average", math_loss=1.1, docs_loss=2.1, kept_a=0.9, kept_b=0.9),
        "bad": dict(method="ties", math_loss=1.5, docs_loss=2.6, kept_a=0.5, kept_b=0.4),
    }
    assert merge_gain.pareto(models) == ["A", "B", "avg"]
    line = merge_gain.verdict(dict(models=models), 0.8)
    assert line.startswith("1 of 2 merges keep at least 80%") and "best: avg" in line


def test_every_planned_merge_is_a_merge_command_config():
    c = load_config("reproduce.py", "merge_gain")
    plan = merge_gain.merge_plan(c, "BASE", "A", "B")
    methods = [m for _, m, _ in plan]
    assert set(methods) == set(merge_gain.METHODS)
    assert len(plan) == 3 + 3 + 2 + 3 * 2  # averages inside (0, 1), SLERP t, task arithmetic, 3 methods x 2 densities
    for name, method, keys in plan:
        mc = load_config("merge.py")
        for k, v in keys.items():
            mc[k] = v
        dirs, spec = spec_from_config(mc)
        assert dirs[-2:] == ["A", "B"]
        if method in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
            assert dirs[spec.base] == "BASE"
        if method == "slerp":
            assert dirs[spec.base] == "A"


def test_merge_gain_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "solar_jax.reproduce", "--config=configs/reproduce.py:merge_gain_quick",
                        "--config.densities=half", f"--config.output_dir={tmp_path / 'out'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "densities" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_merge_gain_quick_writes_every_artefact_from_the_runs(real_model_dir, tmp_path):
    out = tmp_path / "merge_gain"
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "solar_jax.reproduce", "--config=configs/reproduce.py:merge_gain_quick",
                        f"--config.output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((out / "merge_gain.json").read_text())
    models = results["models"]
    plan = merge_gain.merge_plan(load_config("reproduce.py", "merge_gain_quick"), "", "", "")
    assert list(models) == ["base", "candidate A (math)", "candidate B (docs)"] + [n for n, _, _ in plan]
    a, b, base = models["candidate A (math)"], models["candidate B (docs)"], models["base"]
    # Each candidate trained on its own skill: its loss there fell below the base's.
    assert a["math_loss"] < base["math_loss"] and b["docs_loss"] < base["docs_loss"]
    assert a["kept_a"] == pytest.approx(1.0) and b["kept_b"] == pytest.approx(1.0) and base["kept_a"] == 0
    for m in models.values():
        assert 0.0 <= m["math_exact_match"] <= 1.0 and np.isfinite(m["math_loss"]) and np.isfinite(m["docs_loss"])
    d = results["distance"]
    assert d["tensors"] > 200 and 0 < d["relative_norm_a"] < 0.1 and 0 < d["relative_norm_b"] < 0.1
    assert -1 <= d["task_vector_cos"] <= 1 and d["cos_min"] <= d["cos_median"] <= 1
    assert set(results["pareto"]) <= set(models) and results["pareto"]
    assert (out / "candidate_a_dpo" / "hf" / "config.json").exists()  # the quick variant runs A's DPO too
    assert not (out / "merges").exists() or not any((out / "merges").iterdir())  # merges are scored, then removed
    table = (out / "merge_gain.md").read_text()
    for name, m in models.items():
        assert f"| {name} | {m['math_loss']:.4f} | {m['docs_loss']:.4f} |" in table
    assert results["verdict"] in table and results["verdict"] in r.stdout
    assert (out / "merge_gain.png").stat().st_size > 10_000
    rows = (out / "docs_qa_train.jsonl").read_text().splitlines()
    assert len(rows) == results["docs_qa"]["train"] and set(json.loads(rows[0])) == {"prompt", "completion"}
