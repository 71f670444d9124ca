import json

import numpy as np
import pytest

from solar_jax.evaluation import contamination as C
from tests.conftest import run_command

TRAIN = ("The mitochondria is the powerhouse of the cell and it produces energy for every living organism on "
         "this planet through respiration.")


def test_ngram_check_flags_a_planted_overlap_and_nothing_in_disjoint_text():
    bench = ["What produces energy? THE MITOCHONDRIA is the powerhouse of the cell, and it produces energy for "
             "every living organism on this planet!", "A completely unrelated question about the boiling point of "
             "water at sea level measured in degrees celsius by students."]
    r = C.ngram_overlap([TRAIN], bench, n=13)
    assert r["flagged_items"] == [0] and r["flagged"] == 1
    assert C.ngram_overlap(["nothing in common with anything else here at all"], bench)["flagged"] == 0


def test_command_on_files(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": TRAIN}) + "\n")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": TRAIN[:120], "answer": "x"}) + "\n"
                                          + json.dumps({"question": "unrelated words only here", "answer": "y"}) + "\n")
    out = tmp_path / "r.json"
    r = run_command("solar_jax.contamination", f"--config.train_files={tmp_path / 'train.jsonl'}",
                    f"--config.benchmark_files={tmp_path / 'bench.jsonl'}", f"--config.output_json={out}")
    assert r.returncode == 0, r.stderr
    assert "1 of 2 benchmark items" in r.stdout and json.loads(out.read_text())["ngram"]["flagged"] == 1


def test_neighbourhood_and_min_k_formulas():
    scores = C.neighbourhood_scores([1.0, 2.0], [[1.5, 2.0, 3.0], [1.0, 3.0, 1.5]])
    np.testing.assert_allclose(scores, [0.0, 2 / 3])
    assert C.min_k_prob(np.array([-1.0, -5.0, -2.0, -0.5, -4.0]), k=0.4) == pytest.approx(-4.5)


def test_model_checks_run_on_the_real_model(real_model_dir):
    from solar_jax.evaluation.tasks import load_for_eval
    from solar_jax.evaluation.lm import LanguageModel

    model, tok = load_for_eval(str(real_model_dir))
    lm = LanguageModel(model, tok, batch_size=8, max_len=128)
    prose = C.model_checks(lm, ["The capital of France is Paris, a city on the Seine."], num_neighbours=4)
    noise = C.model_checks(lm, ["qz xv Paris jkw France plm Seine vbt ghh capital"], num_neighbours=4)
    # Min-K% Prob: the rarest tokens of shuffled noise are far less likely than those of prose.
    assert noise["min_k_prob_mean"] < prose["min_k_prob_mean"] - 1 < 0
    assert prose["neighbourhood_fraction_below"] in (0.0, 1.0) and prose["neighbourhood_threshold"] == 0.1
