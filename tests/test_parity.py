"""Logits of solar_jax against transformers (torch, float32) on tiny random models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from solar_jax.weights import hf
from solar_jax.models import transformer as model_lib
from solar_jax.models.transformer import REMAT_POLICIES
from tests.conftest import TINY

TOL = 1e-4  # max |Δlogit| in float32


def torch_logits(model, ids, attention_mask=None, position_ids=None):
    with torch.no_grad():
        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.tensor(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = torch.tensor(position_ids)
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_match_transformers(tiny_hf, name):
    ref_model, path = tiny_hf(name)
    model = hf.load_hf(path)
    ids = np.random.RandomState(1).randint(0, 128, (2, 23))  # longer than the window of 5
    got = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    assert got.dtype == np.float32 and got.shape == (2, 23, 128)
    assert np.abs(got - torch_logits(ref_model, ids)).max() <= TOL


@pytest.mark.parametrize("name", ["llama_gqa", "mistral_window"])
def test_left_padded_batch(tiny_hf, name):
    ref_model, path = tiny_hf(name)
    model = hf.load_hf(path)
    rng = np.random.RandomState(2)
    lengths = [17, 9]
    ids = np.zeros((2, 17), np.int64)
    mask = np.zeros((2, 17), np.int64)
    for row, n in enumerate(lengths):
        ids[row, 17 - n:] = rng.randint(1, 128, n)
        mask[row, 17 - n:] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    got = np.asarray(model(jnp.asarray(ids, jnp.int32), segment_ids=jnp.asarray(mask, jnp.int32)))
    ref = torch_logits(ref_model, ids, mask, positions)
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= TOL
    # Each row also equals that sequence run alone, unpadded.
    for row, n in enumerate(lengths):
        alone = torch_logits(ref_model, ids[row:row + 1, 17 - n:])[0]
        assert np.abs(got[row, 17 - n:] - alone).max() <= TOL


@pytest.mark.parametrize("name", ["llama_tied_llama3", "mistral_window"])
def test_packed_segments_equal_separate_sequences(tiny_hf, name):
    ref_model, path = tiny_hf(name)
    model = hf.load_hf(path)
    rng = np.random.RandomState(3)
    docs = [rng.randint(0, 128, n) for n in (7, 11, 4)]
    row = np.concatenate(docs + [np.zeros(2, np.int64)])  # 22 tokens + 2 padding
    segments = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [np.zeros(2, np.int64)])
    got = np.asarray(model(jnp.asarray(row[None], jnp.int32), segment_ids=jnp.asarray(segments[None], jnp.int32)))[0]
    start = 0
    for doc in docs:
        ref = torch_logits(ref_model, doc[None])[0]
        assert np.abs(got[start:start + len(doc)] - ref).max() <= TOL
        start += len(doc)


@pytest.mark.parametrize("remat", REMAT_POLICIES)
def test_remat_policies_do_not_change_logits(tiny_hf, remat):
    _, path = tiny_hf("llama_gqa")
    ids = jnp.asarray(np.random.RandomState(4).randint(0, 128, (1, 12)), jnp.int32)
    base = np.asarray(hf.load_hf(path)(ids))
    np.testing.assert_array_equal(np.asarray(hf.load_hf(path, remat=remat)(ids)), base)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_an_unrolled_layer_loop_gives_the_same_logits_and_gradients(tiny_hf, remat):
    _, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path)
    params = model_lib.param_dict(model)
    ids = jnp.asarray(np.random.RandomState(6).randint(0, 128, (2, 12)), jnp.int32)

    def logits_and_grads(unroll):
        def loss(p):
            logits = model_lib.model_from_params(model.config, p, remat=remat, scan_unroll=unroll)(ids)
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1)), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    base_logits, base_grads = logits_and_grads(1)
    layers = model.config.num_layers
    for unroll in (2, layers, layers + 5):  # partial, full, more than the layers (taken as full)
        logits, grads = logits_and_grads(unroll)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits), atol=1e-5, rtol=0)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_logits_backward_takes_the_cotangent_in_the_compute_dtype():
    # float32: exactly autodiff's gradients. bfloat16: the table's gradient is bf16 (made and
    # reduce-scattered at half the bytes), equal to autodiff's with the cotangent rounded to bf16.
    rng = np.random.RandomState(7)
    x32, table32 = rng.randn(3, 5, 16).astype(np.float32), rng.randn(40, 16).astype(np.float32)
    weights = jnp.asarray(rng.randn(3, 5, 40), jnp.float32)

    def autodiff(x, table, g_dtype):
        def f(x, table):
            return jnp.einsum("...D,VD->...V", x, table, preferred_element_type=jnp.float32)
        out, vjp = jax.vjp(f, x, table)
        return vjp(weights.astype(g_dtype).astype(jnp.float32))

    def ours(x, table):
        return jax.grad(lambda x, t: jnp.sum(model_lib.logits_matmul(x, t) * weights), argnums=(0, 1))(x, table)

    for a, b in zip(ours(x32, table32), autodiff(x32, table32, jnp.float32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x16, table16 = jnp.asarray(x32, jnp.bfloat16), jnp.asarray(table32, jnp.bfloat16)
    dx, dtable = ours(x16, table16)
    assert dx.dtype == jnp.bfloat16 and dtable.dtype == jnp.bfloat16
    ref_dx, ref_dtable = autodiff(x16, table16, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(dtable, np.float32), np.asarray(ref_dtable, np.float32), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(ref_dx, np.float32), rtol=2e-2, atol=2e-2)


def test_logits_in_the_compute_dtype_are_rounded_to_it_and_float32_out(tiny_hf):
    _, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path)
    params = model_lib.param_dict(model)
    ids = jnp.asarray(np.random.RandomState(8).randint(0, 128, (2, 12)), jnp.int32)
    precise = np.asarray(model_lib.model_from_params(model.config, params, dtype="bfloat16")(ids))
    rounded = np.asarray(model_lib.model_from_params(model.config, params, dtype="bfloat16",
                                                     logits_dtype="compute")(ids))
    assert rounded.dtype == np.float32
    np.testing.assert_array_equal(rounded, rounded.astype(jnp.bfloat16).astype(np.float32))  # bf16 values
    assert not np.array_equal(precise, precise.astype(jnp.bfloat16).astype(np.float32))  # float32 values
    np.testing.assert_allclose(rounded, precise, atol=0.05, rtol=0.02)
    # in float32 compute both are the same float32 matmul
    same = model_lib.model_from_params(model.config, params, logits_dtype="compute")(ids)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(model(ids)))


def test_bfloat16_compute_is_close_and_float32_out(tiny_hf):
    ref_model, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path, dtype="bfloat16")
    ids = np.random.RandomState(5).randint(0, 128, (2, 16))
    got = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    assert got.dtype == np.float32
    # bf16 has 8 bits of mantissa: agreement to a few 1e-2 on O(1) logits, not 1e-4.
    assert np.abs(got - torch_logits(ref_model, ids)).max() < 0.1
    assert model.embed.embedding[...].dtype == jnp.float32  # master params stay float32


# Each supported RoPE written the transformers-5 way (rope_parameters) and the 4.x way
# (rope_theta at the top, rope_scaling with "type"); original_max small so llama3's three
# frequency bands all occur at head_dim 16.
ROPES = {
    "default": {"rope_type": "default", "rope_theta": 5000.0},
    "linear": {"rope_type": "linear", "rope_theta": 5000.0, "factor": 3.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def _rewritten(src, dst, edit):
    import json
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.pop("rope_parameters", None)
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _v4(rope):
    legacy = {("type" if k == "rope_type" else k): v for k, v in rope.items() if k != "rope_theta"}
    return lambda c: c.update(rope_theta=rope["rope_theta"], rope_scaling=None if legacy["type"] == "default"
                              else legacy)


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling", "both"])
def test_each_rope_type_written_either_way_matches_transformers(tiny_hf, tmp_path, rope, layout):
    import transformers

    _, path = tiny_hf("llama_gqa")
    edits = {"rope_parameters": lambda c: c.update(rope_parameters=dict(ROPES[rope])), "rope_scaling": _v4(ROPES[rope]),
             "both": lambda c: (_v4(ROPES[rope])(c), c.update(rope_parameters=dict(ROPES[rope])))}
    path = _rewritten(path, tmp_path / "m", edits[layout])
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = np.random.RandomState(2).randint(0, 128, (1, 60))
    got = np.asarray(hf.load_hf(path)(jnp.asarray(ids, jnp.int32)))
    assert np.abs(got - torch_logits(ref, ids)).max() <= TOL


def test_rope_parameters_and_rope_scaling_that_disagree_are_refused(tiny_hf, tmp_path):
    import transformers

    from solar_jax.errors import SolarError

    _, path = tiny_hf("llama_gqa")
    # A transformers-5 config with an older rope_scaling added: transformers applies the
    # scaling (logits differ from the unscaled model's), so reading rope_parameters alone
    # would be silently wrong.
    edit = lambda c: c.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},  # noqa: E731
                              rope_scaling={"rope_type": "linear", "factor": 4.0})
    both = _rewritten(path, tmp_path / "both", edit)
    ids = np.random.RandomState(3).randint(0, 128, (1, 40))
    scaled = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(str(both), dtype=torch.float32), ids)
    plain = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32), ids)
    assert np.abs(scaled - plain).max() > 1e-3
    with pytest.raises(SolarError, match=r"rope_parameters .*'default'.* and rope_scaling .*'linear'.* disagree"):
        hf.load_hf(both)
    # An unsupported type on either side is refused the same way, before anything is built.
    edit = lambda c: c.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},  # noqa: E731
                              rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(SolarError, match="disagree"):
        hf.load_hf(_rewritten(path, tmp_path / "yarn", edit))
