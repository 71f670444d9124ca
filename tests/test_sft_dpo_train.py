"""SFT and DPO through the train engine, on the real model and the tiny preset."""

import json
import re

import jax
import numpy as np
import pytest

from solar_jax.errors import SolarError
from solar_jax.training.metrics import read_metrics
from solar_jax.training.loop import train_and_evaluate
from tests.conftest import load_config, override


def _real(config_name, real_model_dir, **overrides):
    """The real model's run config; no checkpoints (checkpoint_every=0), no export: only the
    result and the metrics are checked."""
    c = load_config(config_name)
    c.model_dir = str(real_model_dir)
    c.export.enabled = False
    c.eval_batches = 0
    return override(c, **overrides)


def test_a_few_sft_steps_raise_the_likelihood_of_held_out_responses(tmp_path, real_model_dir):
    c = _real("sft.py", real_model_dir, num_steps=6, batch_size=4, seq_len=192, learning_rate=1e-4,
              warmup_steps=1, eval_every=6, checkpoint_every=0, **{"data.num_builtin": 80})
    result = train_and_evaluate(c, tmp_path / "sft", devices=jax.devices()[:1])
    before, after = result["initial_eval_loss"], result["eval_loss"]
    assert after < before - 0.05, (before, after)  # eval loss = -mean log p over response tokens


def test_a_few_dpo_steps_raise_held_out_reward_accuracy_above_half(tmp_path, real_model_dir):
    c = _real("dpo.py", real_model_dir, num_steps=4, batch_size=4, seq_len=128, learning_rate=3e-5,
              warmup_steps=1, eval_every=4, checkpoint_every=0, **{"data.num_builtin": 48})
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


# The train command's checks of SFT and DPO configs and rows, in this process (the command's
# exit-2 edge is test_layout's): each names the problem before anything compiles.
@pytest.mark.parametrize("config, values, match", [
    ("sft.py:tiny", {"template": "vicuna"}, "unknown template 'vicuna'"),
    ("dpo.py:tiny", {"dpo.loss_type": "kto"}, "unknown dpo.loss_type 'kto'"),
    ("sft.py:tiny", {"task": "rlhf"}, "unknown task 'rlhf'"),
])
def test_bad_sft_dpo_config(tmp_path, config, values, match):
    _refused(tmp_path, config, values, match)


def test_bad_rows_in_a_data_file_are_refused_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n{"prompt": "x", "chosen": "y", "rejected": "y"}\n')
    _refused(tmp_path, "dpo.py:tiny", {"data.train_files": str(bad)}, f"{bad}:2: chosen and rejected are identical")


def test_prompts_longer_than_seq_len_are_dropped_and_all_dropped_is_an_error(tmp_path):
    rows = tmp_path / "long.jsonl"
    rows.write_text((json.dumps({"prompt": "word " * 400, "completion": "ok"}) + "\n") * 3)
    message = _refused(tmp_path, "sft.py:tiny", {"data.train_files": str(rows), "data.eval_files": str(rows)},
                       "no usable training example")
    assert "3 dropped (prompt too long for seq_len)" in message


def _refused(tmp_path, config: str, values: dict, match: str) -> str:
    """train_and_evaluate's SolarError for configs/CONFIG with values; nothing compiled or written."""
    name, _, variant = config.partition(":")
    c = load_config(name, variant or None)
    c.workdir = str(tmp_path / "w")
    with pytest.raises(SolarError, match=re.escape(match)) as raised:
        train_and_evaluate(override(c, **values), c.workdir, devices=jax.devices()[:1])
    assert not (tmp_path / "w" / "checkpoints").exists()
    return str(raised.value)
