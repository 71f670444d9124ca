"""The real model, SmolLM2-135M-Instruct, against transformers."""

import json

from solar_jax.evaluation.parity import verify
from tests.conftest import run_command


def test_real_model_logits_and_greedy_generation_match_transformers(real_model_dir):
    r = verify(str(real_model_dir), "What is the capital of France?", chat=True, max_new_tokens=20)
    assert r["prompt_tokens"] > 20
    assert r["max_abs_logit_diff"] <= 1e-3
    assert r["greedy_equal"], r["text"]
    assert len(r["tokens"]) == 20
    assert "Paris" in r["text"]


def test_real_model_dir_is_plain_float32_llama(real_model_dir):
    config = json.loads((real_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config


def test_real_model_command_refuses_existing_dir(real_model_dir):
    r = run_command("solar_jax.real_model", f"--config.output_dir={real_model_dir}")
    assert r.returncode == 2 and "not empty" in r.stderr
