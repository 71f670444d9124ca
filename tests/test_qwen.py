"""Qwen2/Qwen2.5 and Qwen3 through the recipe: HF round trip, identity up-scaling, every merge
method against mergekit's formulas, CPT/SFT/DPO training (sharded), scoring. Logits against
transformers for each tiny Qwen shape are in test_parity.py (conftest.TINY)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from solar_jax.errors import SolarError
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.pipelines.merging import merge_dirs, spec_from_config
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.metrics import read_metrics
from solar_jax.weights import hf
from tests.conftest import load_config, make_tiny_hf, override, run_command
from tests.test_hf_io import hf_tensors
from tests.test_merge_formulas import _reference

QWENS = ["qwen2_tied", "qwen2_window", "qwen3_gqa", "qwen3_bias"]


def _logits(path, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("name", QWENS)
def test_hf_round_trip_is_bit_exact_and_transformers_loads_the_export(tiny_hf, tmp_path, name):
    _, src = tiny_hf(name)
    model = hf.load_hf(src)
    out = hf.save_hf(model, tmp_path / "out")
    before, after = hf_tensors(src), hf_tensors(out)
    assert sorted(before) == sorted(after)
    assert any(".bias" in k for k in before) or any("q_norm" in k for k in before)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == name[:5] and config["architectures"] == [f"Qwen{name[4]}ForCausalLM"]
    ids = np.random.RandomState(0).randint(0, 128, (1, 12))
    np.testing.assert_array_equal(_logits(out, ids), _logits(src, ids))


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3_bias"])
def test_identity_upscaling_keeps_the_base_logits_and_each_layers_biases_and_norms_travel_with_it(tmp_path, name):
    _, src = make_tiny_hf(name, tmp_path / "base", num_hidden_layers=4)
    out = tmp_path / "up"
    r = run_command("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1", "--config.init=identity",
                    f"--config.output_dir={out}")
    assert r.returncode == 0, r.stderr
    before, after = hf_tensors(src), hf_tensors(out)
    suffixes = {k.split(".", 3)[3] for k in before if k.startswith("model.layers.")}
    assert {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"} <= suffixes
    for i, j in enumerate([0, 1, 2, 1, 2, 3]):  # s = 2(n - m): layers 0-2 then 1-3
        for suffix in suffixes:
            zeroed = i == 3 or i == 4  # the second copies of layers 1 and 2
            expected = before[f"model.layers.{j}.{suffix}"]
            if zeroed and suffix in ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight"):
                expected = np.zeros_like(expected)
            np.testing.assert_array_equal(after[f"model.layers.{i}.{suffix}"], expected, err_msg=f"{i} {suffix}")
    ids = np.random.RandomState(1).randint(0, 128, (2, 10))
    np.testing.assert_array_equal(_logits(out, ids), _logits(src, ids))  # transformers' own forward
    deep = np.asarray(hf.load_hf(out)(jnp.asarray(ids, jnp.int32)))
    np.testing.assert_array_equal(deep, np.asarray(hf.load_hf(src)(jnp.asarray(ids, jnp.int32))))


def _slerp(t, a, b):
    """mergekit's slerp on one tensor (float64; lerp when the directions are nearly colinear)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    an, bn = a64 / max(np.linalg.norm(a64), 1e-8), b64 / max(np.linalg.norm(b64), 1e-8)
    dot = float(np.sum(an * bn))
    if abs(dot) > 0.9995:
        return (1 - t) * a64 + t * b64
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * a64 + np.sin(t * theta) * b64) / np.sin(theta)


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3_bias"])
@pytest.mark.parametrize("method", ["linear", "slerp", "ties"])
def test_every_tensor_of_a_merge_is_mergekits_formula(tmp_path, name, method):
    dirs = [make_tiny_hf(name, tmp_path / f"m{s}", seed=s)[1] for s in range(3)]  # m0: the base (ties)
    c = override(load_config("merge.py"), method=method, output_dir=str(tmp_path / "out"))
    if method == "ties":
        override(c, base=str(dirs[0]), model_dir=f"{dirs[1]},{dirs[2]}", weights="0.6,0.4", density="0.5")
    else:
        override(c, model_dir=f"{dirs[1]},{dirs[2]}", weights="0.3,0.7", t="0.3")
    model_dirs, spec = spec_from_config(c)
    merge_dirs(model_dirs, spec, c.output_dir)
    base, a, b, got = (hf_tensors(d) for d in (*dirs, tmp_path / "out"))
    assert sorted(got) == sorted(a) and any("bias" in k for k in got)
    for k in a:
        if method == "linear":
            expected = (0.3 * a[k].astype(np.float64) + 0.7 * b[k]) / 1.0
        elif method == "slerp":
            expected = _slerp(0.3, a[k], b[k])
        else:
            expected = _reference("ties", base[k], [a[k], b[k]], [0.6, 0.4], [0.5, 0.5], True)
        np.testing.assert_allclose(got[k], expected, rtol=1e-5, atol=1e-6, err_msg=k)


def _tiny(config_file, qwen_dir, **overrides):
    c = load_config(config_file, "tiny")
    values = dict(model_preset="", model_dir=str(qwen_dir), tokenizer="bytes", upscale_m=-1, num_steps=3,
                  eval_every=3, checkpoint_every=3)
    return override(c, **{**values, **overrides})


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    return {name: make_tiny_hf(name, root / name, vocab_size=320, num_hidden_layers=4, max_position_embeddings=512)[1]
            for name in ("qwen2_tied", "qwen3_gqa")}


def test_cpt_up_scaled_on_the_fly_trains_the_same_sharded_as_on_one_device(qwen_dirs, tmp_path):
    # m=1: 4 -> 6 layers at start; fsdp x tensor splits the biases and q/k norms by the rules.
    runs = {}
    for label, mesh, devices in (("one", (1, 1, 1), jax.devices()[:1]), ("eight", (1, 4, 2), jax.devices())):
        c = _tiny("cpt.py", qwen_dirs["qwen2_tied"], upscale_m=1)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
        runs[label] = train_and_evaluate(c, tmp_path / label, devices=devices, verbose=False)
    a, b = ({r["step"]: r["loss"] for r in read_metrics(tmp_path / n / "metrics.jsonl") if r.get("loss")}
            for n in ("one", "eight"))
    assert sorted(a) == [1, 2, 3] and a[3] < a[1]
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
    export = tmp_path / "eight" / "hf"
    assert json.loads((export / "config.json").read_text())["num_hidden_layers"] == 6
    assert transformers.AutoModelForCausalLM.from_pretrained(str(export)) is not None


@pytest.mark.parametrize("config_file", ["sft.py", "dpo.py"])
def test_sft_and_dpo_train_a_qwen3_model(qwen_dirs, tmp_path, config_file):
    c = _tiny(config_file, qwen_dirs["qwen3_gqa"])
    result = train_and_evaluate(c, tmp_path / "run", verbose=False)
    assert result["status"] == "completed" and np.isfinite(result["loss"])
    trained, start = hf_tensors(tmp_path / "run" / "hf"), hf_tensors(qwen_dirs["qwen3_gqa"])
    assert not np.array_equal(trained["model.layers.0.self_attn.q_norm.weight"],
                              start["model.layers.0.self_attn.q_norm.weight"])  # the norms learn


def test_scoring_a_qwen_model_equals_transformers_log_likelihoods(qwen_dirs):
    path = qwen_dirs["qwen2_tied"]
    lm = LanguageModel(hf.load_hf(path), tokenizer_lib.ByteTokenizer(), batch_size=2)
    pairs = [("The capital of France is", " Paris"), ("2 + 2 =", " 4"), ("def f(x):", "\n    return x")]
    got = [score for score, _ in lm.loglikelihood(pairs)]
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for (context, continuation), score in zip(pairs, got):
        ctx, cont = list(context.encode()), list(continuation.encode())
        with torch.no_grad():
            logp = torch.log_softmax(ref(torch.tensor([ctx + cont])).logits[0].double(), -1).numpy()
        expected = sum(logp[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("edit, match", [
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), "a sliding window on 1 of 2 layers"),
    (dict(layer_types=["full_attention"]), "layer_types must list"),
    (dict(mlp_bias=True), "mlp_bias"),
])
def test_qwen_configs_transformers_reads_differently_are_refused(tiny_hf, tmp_path, edit, match):
    import shutil

    _, src = tiny_hf("qwen2_tied")
    d = tmp_path / "edited"
    shutil.copytree(src, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("layer_types", None)
    config.update(edit)
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(SolarError, match=match):
        hf.load_hf(d)


def test_a_qwen2_step_with_biases_compiles_for_a_tpu_slice_and_fits():
    import dataclasses

    from solar_jax.models.config import PRESETS
    from solar_jax.planning import compiled as compiled_plan
    from solar_jax.training.run_config import base_config

    # Qwen2.5-7B's head layout at a few layers: the biases and the 152k vocab sharded by the rules.
    small = dataclasses.replace(PRESETS["qwen2.5-7b"], num_layers=2, hidden_size=896, intermediate_size=2048,
                                num_heads=7, num_kv_heads=1)
    c = base_config()
    c.batch_size, c.seq_len, c.dtype, c.remat = 8, 1024, "bfloat16", "dots_no_batch"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    p = compiled_plan.compile_plan(c, small, "tpu-v5p", 4)
    assert p.topology == "v5p:2x2x1" and p.kernel == "splash" and p.fits and p.memory["temporaries"] > 0
