"""Evaluation: harness definitions on hand-written samples, scores against direct model runs."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from solar_jax.evaluation import tasks as E
from solar_jax.errors import SolarError
from solar_jax.evaluation.lm import LanguageModel, cut_at_stops
from tests.conftest import REPO, run_command

SAMPLES = REPO / "benchmarks" / "samples"


@pytest.fixture(scope="module")
def lm(real_model_dir):
    model, tok = E.load_for_eval(str(real_model_dir))
    return LanguageModel(model, tok, batch_size=4, max_len=512)


def test_multiple_choice_scores_equal_the_argmax_of_direct_model_runs(lm):
    rows = E.read_task_file(SAMPLES / "arc_challenge.jsonl")
    result = E.run_task(lm, "arc_challenge", SAMPLES, num_fewshot=0)
    correct = []
    for where, row in rows:
        ctx, choices, gold = E.fmt_arc(row, where)
        direct = []
        for choice in choices:
            c_ids, x_ids = lm.encode_pair(ctx, choice)
            ids = jnp.asarray([c_ids + x_ids], jnp.int32)
            logp = np.asarray(jax_log_softmax(lm.model(ids[:, :-1])))[0]
            direct.append(sum(logp[len(c_ids) - 1 + j, t] for j, t in enumerate(x_ids)))
        got = [ll for ll, _ in lm.loglikelihood([(ctx, ch) for ch in choices])]
        np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)
        correct.append(int(np.argmax(np.asarray(direct) / np.asarray([len(c) for c in choices]))) == gold)
    assert result["acc_norm"] == pytest.approx(np.mean(correct))
    assert result["samples"] == 2 and result["num_fewshot"] == 0


def jax_log_softmax(logits):
    import jax

    return jax.nn.log_softmax(logits, axis=-1)


class StubLM:
    """Fixed log-likelihoods, to check the metric formulas exactly."""

    def __init__(self, lls):
        self.lls = list(lls)

    def loglikelihood(self, requests):
        return [(self.lls[i], False) for i in range(len(requests))]


def test_acc_norm_divides_by_character_length(tmp_path):
    (tmp_path / "multiple_choice.jsonl").write_text(json.dumps({"context": "Q", "choices": [" ab", " abcdef"], "gold": 1}) + "\n")
    r = E.run_task(StubLM([-4.0, -6.0]), "multiple_choice", tmp_path)
    assert r["acc"] == 0.0  # -4 > -6
    assert r["acc_norm"] == 1.0  # -4/3 < -6/7


def test_mc2_matches_its_formula(tmp_path):
    row = {"question": "q", "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 1]}}
    (tmp_path / "truthfulqa_mc2.jsonl").write_text(json.dumps(row) + "\n")
    r = E.run_task(StubLM([math.log(0.5), math.log(0.3), math.log(0.2)]), "truthfulqa_mc2", tmp_path)
    assert r["mc2"] == pytest.approx((0.5 + 0.2) / (0.5 + 0.3 + 0.2))


def test_answer_extraction_and_stop_sequences():
    assert E.extract_answer("so the total is\n#### 1,234") == "1234"
    assert E.extract_answer("#### $5.") == "5"
    assert E.extract_answer("#### 12.") == "12"
    assert E.extract_answer("#### -3.50") == "-3.50"
    assert E.extract_answer("The answer is 7") is None
    assert cut_at_stops("7 apples.\n\nQuestion: next", E.GSM8K_STOPS) == "7 apples.\n\n"


def test_generation_stops_at_a_stop_sequence(lm):
    free = lm.generate_until([("Question: What is 2 + 2?\nAnswer:", (), 24)])[0]
    assert len(free) > 0
    stop = free.strip()[:3]
    cut = lm.generate_until([("Question: What is 2 + 2?\nAnswer:", (stop,), 24)])[0]
    assert stop not in cut and len(cut) < len(free)


def test_every_h6_sample_file_runs_and_the_table_has_h6(tmp_path, real_model_dir):
    results = E.evaluate_models([str(real_model_dir)], list(E.H6) + ["perplexity"], str(SAMPLES), batch_size=8,
                                max_len=384, num_fewshot=1)
    per = results["models"][str(real_model_dir)]["tasks"]
    for t in E.H6:
        assert 0.0 <= per[t]["score"] <= 1.0 and per[t]["samples"] >= 2
    assert per["arc_challenge"]["num_fewshot"] == 1
    assert 0 < per["perplexity"]["bits_per_byte"] < 10
    assert "H6" in results["models"][str(real_model_dir)]
    assert "H6" in E.table(results)


def test_bad_task_input(tmp_path):
    (tmp_path / "mmlu.jsonl").write_text('{"question": "q", "choices": ["a"], "answer": 0}\nnot json\n')
    with pytest.raises(SolarError, match=r"mmlu.jsonl:2: not valid JSON"):
        E.read_task_file(tmp_path / "mmlu.jsonl")
    with pytest.raises(SolarError, match="unknown task 'squad'; known: arc_challenge"):
        E.task_def("squad")
    shutil.copy(SAMPLES / "gsm8k.jsonl", tmp_path / "gsm8k.jsonl")
    shutil.copy(SAMPLES / "gsm8k_train.jsonl", tmp_path / "gsm8k_train.jsonl")
    with pytest.raises(SolarError, match="num_fewshot=5 for gsm8k but its train split .* has 3 rows"):
        E.fewshot_rows("gsm8k", tmp_path, 5, 0)
    (tmp_path / "arc_challenge.jsonl").write_text(json.dumps({"question": "q", "choices": {"text": ["a"], "label": ["A"]}}) + "\n")
    with pytest.raises(SolarError, match=r"arc_challenge.jsonl:1: missing field 'answerKey'"):
        E.run_task(StubLM([0.0]), "arc_challenge", tmp_path, num_fewshot=0)


def test_evaluate_command_bad_input_exit_2(tmp_path, real_model_dir):
    r = run_command("solar_jax.evaluate", f"--config.model_dir={real_model_dir}", "--config.tasks=squad",
                    f"--config.data_dir={SAMPLES}")
    assert r.returncode == 2 and "unknown task 'squad'" in r.stderr and "Traceback" not in r.stderr
    r = run_command("solar_jax.evaluate", f"--config.model_dir={real_model_dir}", "--config.tasks=gsm8k",
                    f"--config.data_dir={SAMPLES}", "--config.num_fewshot=9")
    assert r.returncode == 2 and "num_fewshot=9" in r.stderr


def test_lm_eval_adapter_gives_the_native_log_likelihoods(real_model_dir, lm):
    import solar_jax.evaluation.lm_eval  # noqa: F401  registers the model
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    adapter = get_model("solar_jax").create_from_arg_string(f"model_dir={real_model_dir},batch_size=4,max_length=512")
    pairs = [("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury"),
             ("Question: Which planet is closest to the Sun?\nAnswer:", " Jupiter"), ("", "Hello world")]
    requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    got = adapter.loglikelihood(requests)
    assert got == lm.loglikelihood(pairs)
    rolling = adapter.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Some text to score.",), 0)])
    assert rolling == lm.loglikelihood_rolling(["Some text to score."])
    gen = adapter.generate_until([Instance("generate_until", {}, ("Question: 2 + 2?\nAnswer:",
                                                                  {"until": ["\n"], "max_gen_toks": 12}), 0)])
    assert len(gen) == 1 and "\n" not in gen[0]


def test_scoring_on_a_mesh_of_8_devices_equals_one_device(lm):
    import jax

    from solar_jax.parallel import sharding

    assert jax.device_count() == 8
    meshed = LanguageModel(lm.model, lm.tokenizer, batch_size=8, max_len=512,
                           mesh=sharding.make_mesh(data=1, fsdp=4, tensor=2))
    pairs = [("Question: What colour is the sky?\nAnswer:", c) for c in (" blue", " green", " red")]
    np.testing.assert_allclose([x for x, _ in meshed.loglikelihood(pairs)], [x for x, _ in lm.loglikelihood(pairs)],
                               rtol=1e-5, atol=1e-5)


def test_importing_the_adapter_keeps_lm_evals_own_models():
    import solar_jax.evaluation.lm_eval  # noqa: F401
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    assert get_model("hf") is HFLM and get_model("solar_jax").__name__ == "SolarJaxLM"


LOCAL_TASK = """task: solar_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_lm_eval_command_is_lm_evals_cli_with_the_adapter(tmp_path, real_model_dir, lm):
    # A task of lm-eval's own YAML kind, on local data (no hub): the documented command runs.
    rows = [dict(question="Which planet is closest to the Sun?", choices=[" Mercury", " Jupiter"], answer=0),
            dict(question="What colour is a clear daytime sky?", choices=[" green", " blue"], answer=1)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "solar_local_mc.yaml").write_text(LOCAL_TASK.format(data=data))
    env = dict(os.environ, XLA_FLAGS="", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"))
    r = subprocess.run([sys.executable, "-m", "solar_jax.lm_eval", "--model", "solar_jax", "--model_args",
                        f"model_dir={real_model_dir}", "--batch_size", "2", "--tasks", "solar_local_mc", "--include_path",
                        str(tmp_path / "tasks"), "--output_path", str(tmp_path / "results")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "solar_local_mc" in r.stdout and "acc" in r.stdout, r.stdout[-2000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("results*.json")]
    # Its accuracy is the one the native engine's log-likelihoods give on the same prompts.
    picks = [int(np.argmax([ll for ll, _ in lm.loglikelihood([(f"Question: {row['question']}\\nAnswer:", c)
                                                            for c in row["choices"]])])) for row in rows]
    expected = np.mean([p == row["answer"] for p, row in zip(picks, rows)])
    assert results and results[0]["results"]["solar_local_mc"]["acc,none"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def hf_lm(real_model_dir):
    """lm-eval's own `hf` model (transformers + torch) on the same weights: the peer whose
    numbers the packed engine must reproduce."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(real_model_dir), batch_size=4, dtype="float32", device="cpu", max_length=64)


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_multiple_choice_equals_lm_eval_hf(lm, hf_lm):
    # Choices share their question (one context, run once) and their first tokens (" ####").
    requests = [(f"Question: What is {a} + {b}?\nAnswer:", f" #### {c}")
                for a, b in ((2, 3), (10, 7)) for c in (a + b, a + b + 1, 2 * a, 0)]
    requests += [("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury"),
                 ("The capital of France is", " Paris"), ("", "Hello world")]
    ours = lm.loglikelihood(requests)
    theirs = hf_lm.loglikelihood(_instances("loglikelihood", requests))
    np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs], atol=2e-4, rtol=1e-5)
    assert [g for _, g in ours] == [bool(g) for _, g in theirs]
    assert any(g for _, g in ours)  # " Paris" is the real model's greedy pick: the flag can be True


def test_rolling_log_likelihood_equals_lm_eval_hf_over_several_windows(lm, hf_lm):
    short = LanguageModel(lm.model, lm.tokenizer, batch_size=4, max_len=64)  # hf_lm's max_length
    texts = [SAMPLE_TEXT, SAMPLE_TEXT[:200], "One line."]
    assert len(short.encode(texts[0])) > 64  # two windows at least
    ours = short.loglikelihood_rolling(texts)
    theirs = hf_lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-5)


def test_generation_equals_lm_eval_hf(lm, hf_lm):
    requests = [("Question: What is 2 + 2?\nAnswer:", {"until": ["\n"], "max_gen_toks": 12}),
                ("The capital of France is", {"until": ["."], "max_gen_toks": 10})]
    ours = lm.generate_until([(c, kw["until"], kw["max_gen_toks"]) for c, kw in requests])
    theirs = hf_lm.generate_until(_instances("generate_until", requests))
    assert ours == theirs and all(ours)


SAMPLE_TEXT = (
    "The Python language reference describes the syntax and core semantics of the language. It is terse, "
    "but attempts to be exact and complete. The semantics of non-essential built-in object types and of "
    "the built-in functions and modules are described in the library reference. For an informal "
    "introduction to the language, see the tutorial. For C or C++ programmers, two additional manuals "
    "exist: extending and embedding describes the high-level picture of how to write an extension "
    "module, and the C API reference manual describes the interfaces available in detail.")
