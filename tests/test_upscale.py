"""Depth up-scaling on param trees and streamed HF dirs."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import solar_jax as sj
from solar_jax.config_files import load_config
from solar_jax.errors import SolarError
from solar_jax.surgery.upscale import Slice, parse_slices
from solar_jax.training.loop import train_and_evaluate
from tests.conftest import make_tiny_hf, run_command
from tests.test_hf_io import hf_tensors


@pytest.fixture(scope="module")
def base4(tmp_path_factory):
    """A 4-layer tiny Llama: n = 4, so m = 1 gives 6 layers."""
    return make_tiny_hf("llama_gqa", tmp_path_factory.mktemp("base4"), num_hidden_layers=4)


def test_upscaled_hf_dir_is_the_solar_construction(base4, tmp_path):
    ref_model, src = base4
    out = tmp_path / "up"
    r = run_command("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1", f"--config.output_dir={out}")
    assert r.returncode == 0, r.stderr
    n, m = 4, 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2 * (n - m)
    before, after = hf_tensors(src), hf_tensors(out)
    for i in range(2 * (n - m)):
        j = i if i < n - m else i - (n - 2 * m)  # layer i comes from base layer j
        for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            np.testing.assert_array_equal(after[f"model.layers.{i}.{suffix}"], before[f"model.layers.{j}.{suffix}"])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        np.testing.assert_array_equal(after[name], before[name])
    deeper = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor(np.random.RandomState(0).randint(0, 128, (2, 9)))
    with torch.no_grad():
        h_base = ref_model(ids, output_hidden_states=True).hidden_states
        h_deep = deeper(ids, output_hidden_states=True).hidden_states
    # After the first n - m layers the up-scaled model is exactly the base at that depth.
    np.testing.assert_array_equal(h_deep[n - m].numpy(), h_base[n - m].numpy())
    assert not np.allclose(h_deep[-1].numpy(), h_base[-1].numpy())


def test_api_equals_streaming_command_and_hidden_states_match(base4, tmp_path):
    _, src = base4
    model = sj.load_hf(src)
    deeper = sj.depth_up_scale(model, m=1)
    assert deeper.config.num_layers == 6
    streamed = sj.load_hf(sj.save_hf(deeper, tmp_path / "api"))
    r = run_command("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1",
                    f"--config.output_dir={tmp_path / 'cmd'}")
    assert r.returncode == 0, r.stderr
    a, b = hf_tensors(tmp_path / "api"), hf_tensors(tmp_path / "cmd")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]], jnp.int32)
    _, _, h_base = model.forward(ids, return_hidden=True)
    _, _, h_deep = streamed.forward(ids, return_hidden=True)
    np.testing.assert_array_equal(np.asarray(h_deep[3]), np.asarray(h_base[3]))


def test_other_seams_and_several_models(base4, tmp_path):
    _, src = base4
    model = sj.load_hf(src)
    twice = sj.depth_up_scale(model, m=0)  # plain duplication: 2n layers
    assert twice.config.num_layers == 8
    q = model.layers.attn.q[...]
    np.testing.assert_array_equal(np.asarray(twice.layers.attn.q[...]), np.concatenate([q, q]))
    custom = sj.depth_up_scale(model, slices="0:3,2:4")
    np.testing.assert_array_equal(np.asarray(custom.layers.attn.q[...]), np.concatenate([q[0:3], q[2:4]]))
    other, other_src = make_tiny_hf("llama_gqa", tmp_path / "other", seed=7, num_hidden_layers=4)
    out = tmp_path / "two"
    r = run_command("solar_jax.upscale", f"--config.model_dir={src},{other_src}", "--config.slices=0:2@0,2:4@1",
                    f"--config.output_dir={out}")
    assert r.returncode == 0, r.stderr
    t, a, b = hf_tensors(out), hf_tensors(src), hf_tensors(other_src)
    np.testing.assert_array_equal(t["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    np.testing.assert_array_equal(t["model.layers.3.mlp.up_proj.weight"], b["model.layers.3.mlp.up_proj.weight"])
    np.testing.assert_array_equal(t["model.embed_tokens.weight"], a["model.embed_tokens.weight"])  # bottom
    np.testing.assert_array_equal(t["lm_head.weight"], b["lm_head.weight"])  # top


def test_streaming_keeps_the_input_dtype_and_yaml_passthrough(tmp_path):
    _, src = make_tiny_hf("mistral_window", tmp_path / "bf16", dtype="bfloat16", num_hidden_layers=4)
    (tmp_path / "up.yaml").write_text(
        f"slices:\n  - sources:\n      - model: {src}\n        layer_range: [0, 3]\n"
        f"  - sources:\n      - model: {src}\n        layer_range: [1, 4]\nmerge_method: passthrough\n")
    r = run_command("solar_jax.merge", f"--config.yaml={tmp_path / 'up.yaml'}", f"--config.output_dir={tmp_path / 'y'}")
    assert r.returncode == 0, r.stderr
    r = run_command("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1", f"--config.output_dir={tmp_path / 'c'}")
    assert r.returncode == 0, r.stderr
    y, c = hf_tensors(tmp_path / "y"), hf_tensors(tmp_path / "c")
    assert y.keys() == c.keys() and all(np.array_equal(y[k], c[k]) for k in y)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["dtype"] == "bfloat16"
    assert y["model.norm.weight"].dtype == np.int16  # bf16 bits, untouched


@pytest.mark.parametrize("args, match", [
    (["--config.m=4"], "0 <= m < n"),
    (["--config.m=-1"], "0 <= m < n"),
    (["--config.slices=0:3,2:5"], "out of range"),
    (["--config.slices=3:3"], "out of range"),
    (["--config.slices=0-3"], "cannot read slice"),
    (["--config.init=zero"], "unknown init 'zero'; known: copy, identity, scaled"),
])
def test_bad_up_scaling_input(base4, tmp_path, args, match):
    out = tmp_path / "out"
    r = run_command("solar_jax.upscale", f"--config.model_dir={base4[1]}", f"--config.output_dir={out}", *args)
    assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_parse_slices_and_api_errors(base4):
    assert parse_slices("0:24,8:32") == [Slice(0, 24), Slice(8, 32)]
    assert parse_slices("0:2@1") == [Slice(0, 2, 1)]
    model = sj.load_hf(base4[1])
    with pytest.raises(SolarError, match="0 <= m < n"):
        sj.depth_up_scale(model, m=4)
    with pytest.raises(SolarError, match="exactly one"):
        sj.depth_up_scale(model)


def test_identity_init_computes_the_base_models_function_on_the_real_model(real_model_dir):
    # SmolLM2: n = 30. The repeated layers' second copies add nothing: logits equal the base's.
    model = sj.load_hf(real_model_dir)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, model.config.vocab_size, (2, 24)), jnp.int32)
    base = np.asarray(model(ids))
    for m in (4, 8, 12):
        deeper = sj.depth_up_scale(model, m=m, init="identity")
        assert deeper.config.num_layers == 2 * (30 - m)
        np.testing.assert_allclose(np.asarray(deeper(ids)), base, atol=1e-5, rtol=0)
    assert not np.allclose(np.asarray(sj.depth_up_scale(model, m=8)(ids)), base, atol=1e-2)  # copy changes it


def test_init_options_scale_only_the_repeated_layers_output_projections(base4, tmp_path):
    ref_model, src = base4  # n = 4, m = 1: output layers 0 1 2 | 1 2 3; base layers 1 and 2 repeat
    before = hf_tensors(src)
    for init, factors in (("identity", [1, 1, 1, 0, 0, 1]), ("scaled", [1, 0.5, 0.5, 0.5, 0.5, 1]),
                          ("copy", [1] * 6)):
        out = tmp_path / init
        r = run_command("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1", f"--config.init={init}",
                        f"--config.output_dir={out}")
        assert r.returncode == 0 and f"init {init}" in r.stdout, r.stderr
        after = hf_tensors(out)
        for i, (j, factor) in enumerate(zip([0, 1, 2, 1, 2, 3], factors)):
            for suffix in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                np.testing.assert_array_equal(after[f"model.layers.{i}.{suffix}"],
                                              before[f"model.layers.{j}.{suffix}"] * np.float32(factor))
            for suffix in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "post_attention_layernorm.weight"):
                np.testing.assert_array_equal(after[f"model.layers.{i}.{suffix}"], before[f"model.layers.{j}.{suffix}"])
        # The in-memory path (the API, and training's upscale_m) writes the same tensors.
        api = hf_tensors(sj.save_hf(sj.depth_up_scale(sj.load_hf(src), m=1, init=init), tmp_path / f"api-{init}"))
        assert all(np.array_equal(api[k], after[k]) for k in after)
    # transformers as the oracle: the identity-initialised dir computes the base's logits.
    deeper = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "identity"), dtype=torch.float32).eval()
    ids = torch.tensor(np.random.RandomState(1).randint(0, 128, (2, 9)))
    with torch.no_grad():
        np.testing.assert_allclose(deeper(ids).logits.numpy(), ref_model(ids).logits.numpy(), atol=1e-5, rtol=0)


def test_training_up_scaled_on_the_fly_with_identity_starts_at_the_base_models_loss(tmp_path):
    from solar_jax.training.metrics import read_metrics

    def step0_loss(*args):
        r = run_command("solar_jax.train", "--config=configs/cpt.py:tiny", f"--config.workdir={tmp_path / args[0]}",
                        "--config.num_steps=1", *args[1:])
        assert r.returncode == 0, r.stderr[-2000:]
        return [x for x in read_metrics(tmp_path / args[0] / "metrics.jsonl") if x["step"] == 0][0]["eval_loss"]

    base = step0_loss("base", "--config.upscale_m=-1")  # the 4-layer preset as it is
    assert step0_loss("identity", "--config.upscale_init=identity") == pytest.approx(base, abs=1e-5)  # 6 layers


def test_llama_pro_expansion_as_slices():
    from solar_jax.surgery.upscale import llama_pro_slices, repeated_layers, resolve_slices

    four = llama_pro_slices(4, 2)  # groups 0:2 and 2:4, each followed by a copy of its last layer
    assert four == [Slice(0, 2), Slice(1, 2), Slice(2, 4), Slice(3, 4)]
    assert repeated_layers(four) == [False, False, True, False, False, True]
    smol = resolve_slices("expand:14", 30)  # SOLAR m = 8's depth: 44 layers
    assert sum(s.end - s.start for s in smol) == 44 and sum(repeated_layers(smol)) == 14
    assert resolve_slices("0:3,1:4", 4) == parse_slices("0:3,1:4")
    assert repeated_layers(parse_slices("0:3,1:4")) == [False, False, False, True, True, False]
    for bad, message in (("expand:0", "1 <= blocks <= n"), ("expand:5", "1 <= blocks <= n"),
                         ("expand:two", "expected expand:P")):
        with pytest.raises(SolarError, match=message):
            resolve_slices(bad, 4)


def test_llama_pro_with_identity_blocks_computes_the_base_models_function(real_model_dir):
    model = sj.load_hf(real_model_dir)
    ids = jnp.asarray(np.random.RandomState(2).randint(0, model.config.vocab_size, (2, 16)), jnp.int32)
    expanded = sj.depth_up_scale(model, slices="expand:14", init="identity")
    assert expanded.config.num_layers == 44
    np.testing.assert_allclose(np.asarray(expanded(ids)), np.asarray(model(ids)), atol=1e-5, rtol=0)


def test_training_only_the_new_layers_leaves_everything_else_as_loaded(tmp_path):
    import jax

    from solar_jax.models import transformer as model_lib
    from solar_jax.training import runs
    from solar_jax.parallel import sharding
    from solar_jax.training.loop import train_and_evaluate
    from solar_jax.training.state import initial_params, resolve_model, state_layout
    from tests.conftest import load_config, override

    c = load_config("cpt.py", "tiny")  # the 4-layer preset; expand:2 -> 6 layers, 2 and 5 new
    override(c, num_steps=2, upscale_m=-1, upscale_slices="expand:2", upscale_init="identity",
             upscale_train="new", learning_rate=1e-2, weight_decay=0.1, checkpoint_every=2)
    train_and_evaluate(c, tmp_path / "run", devices=jax.devices()[:1], verbose=False)
    after = model_lib.flat_params(runs.load_params_any(str(tmp_path / "run"))[0])
    source = resolve_model(c)
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
    layout = state_layout(c, source.config, mesh)
    before = model_lib.flat_params(initial_params(source, layout.flat_param_shardings, c.seed))
    new = [2, 5]
    for path, value in before.items():
        value, trained = np.asarray(value), np.asarray(after[path])
        if not path.startswith("layers/"):
            np.testing.assert_array_equal(trained, value, err_msg=path)
            continue
        old = [i for i in range(6) if i not in new]
        np.testing.assert_array_equal(trained[old], value[old], err_msg=path)
        assert not np.array_equal(trained[new], value[new]), path


def test_training_only_the_new_layers_needs_repeated_layers(tmp_path):
    # in this process: the train command's exit-2 edge is test_layout's
    for values, message in ((dict(upscale_m=-1, upscale_train="new"), "upscale_train=new trains only the repeated layers"),
                            (dict(upscale_train="some"), "unknown upscale_train 'some'; known: all, new")):
        c = load_config("cpt.py", "tiny")
        c.update(values)
        with pytest.raises(SolarError, match=re.escape(message)):
            train_and_evaluate(c, str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()
