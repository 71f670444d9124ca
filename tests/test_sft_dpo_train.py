"""SFT and DPO through the train engine, on the real model and the tiny preset."""

import jax
import numpy as np
import pytest

from solar_jax.training.metrics import read_metrics
from solar_jax.training.loop import train_and_evaluate
from tests.conftest import load_config, override, run_command


def _real(config_name, real_model_dir, **overrides):
    c = load_config(config_name)
    c.model_dir = str(real_model_dir)
    c.export.enabled = False
    c.eval_batches = 0
    return override(c, **overrides)


def test_a_few_sft_steps_raise_the_likelihood_of_held_out_responses(tmp_path, real_model_dir):
    c = _real("sft.py", real_model_dir, num_steps=6, batch_size=4, seq_len=192, learning_rate=1e-4,
              warmup_steps=1, eval_every=6, checkpoint_every=6, **{"data.num_builtin": 80})
    result = train_and_evaluate(c, tmp_path / "sft", devices=jax.devices()[:1])
    before, after = result["initial_eval_loss"], result["eval_loss"]
    assert after < before - 0.05, (before, after)  # eval loss = -mean log p over response tokens


def test_a_few_dpo_steps_raise_held_out_reward_accuracy_above_half(tmp_path, real_model_dir):
    c = _real("dpo.py", real_model_dir, num_steps=4, batch_size=4, seq_len=128, learning_rate=3e-5,
              warmup_steps=1, eval_every=4, checkpoint_every=4, **{"data.num_builtin": 48})
    result = train_and_evaluate(c, tmp_path / "dpo", devices=jax.devices()[:1])
    assert result["initial_eval"]["eval_loss"] == pytest.approx(np.log(2), abs=1e-5)  # policy == reference
    assert result["eval"]["eval_rewards/accuracies"] > 0.5
    assert result["eval"]["eval_rewards/margins"] > 0
    row = read_metrics(tmp_path / "dpo" / "metrics.jsonl")[-1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "pairs_per_second"):
        assert key in row, key


def test_precomputed_reference_equals_frozen_reference(tmp_path):
    losses = {}
    for mode in ("frozen", "precomputed"):
        c = load_config("dpo.py", "tiny")
        c.num_steps, c.dpo.reference, c.export.enabled = 3, mode, False
        train_and_evaluate(c, tmp_path / mode, devices=jax.devices()[:1])
        losses[mode] = [r["loss"] for r in read_metrics(tmp_path / mode / "metrics.jsonl") if r.get("loss")]
    np.testing.assert_allclose(losses["frozen"], losses["precomputed"], rtol=1e-5)
    assert (tmp_path / "precomputed" / "dpo_reference_train.npy").exists()


def test_dpo_with_gradient_accumulation_gives_the_full_batch_loss(tmp_path):
    results = []
    for accum in (1, 2):
        c = load_config("dpo.py", "tiny")
        c.num_steps, c.grad_accum_steps, c.export.enabled = 1, accum, False
        results.append(train_and_evaluate(c, tmp_path / f"acc{accum}", devices=jax.devices()[:1]))
    # Step 1's loss is the initial policy's: two microbatches of pairs add up to the whole batch.
    assert np.isfinite(results[0]["loss"])
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)


@pytest.mark.parametrize("config, flag, match", [
    ("sft.py:tiny", "--config.template=vicuna", "unknown template 'vicuna'"),
    ("dpo.py:tiny", "--config.dpo.loss_type=kto", "unknown dpo.loss_type 'kto'"),
    ("sft.py:tiny", "--config.task=rlhf", "unknown task 'rlhf'"),
])
def test_bad_sft_dpo_config(tmp_path, config, flag, match):
    r = run_command("solar_jax.train", f"--config=configs/{config}", f"--config.workdir={tmp_path / 'w'}", flag)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_rows_in_a_data_file_exit_2_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n{"prompt": "x", "chosen": "y", "rejected": "y"}\n')
    r = run_command("solar_jax.train", "--config=configs/dpo.py:tiny", f"--config.workdir={tmp_path / 'w'}",
                    f"--config.data.train_files={bad}")
    assert r.returncode == 2 and f"{bad}:2: chosen and rejected are identical" in r.stderr, r.stderr


def test_prompts_longer_than_seq_len_are_dropped_and_all_dropped_is_an_error(tmp_path):
    rows = tmp_path / "long.jsonl"
    import json

    rows.write_text((json.dumps({"prompt": "word " * 400, "completion": "ok"}) + "\n") * 3)
    r = run_command("solar_jax.train", "--config=configs/sft.py:tiny", f"--config.workdir={tmp_path / 'w'}",
                    f"--config.data.train_files={rows}", f"--config.data.eval_files={rows}")
    assert r.returncode == 2, r.stderr
    assert "no usable training example" in r.stderr and "3 dropped (prompt too long for seq_len)" in r.stderr
