"""Logits of solar_jax against transformers (torch, float32) on tiny random models."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from solar_jax.weights import hf
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


def test_bfloat16_compute_is_close_and_float32_out(tiny_hf):
    ref_model, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path, dtype="bfloat16")
    ids = np.random.RandomState(5).randint(0, 128, (2, 16))
    got = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    assert got.dtype == np.float32
    # bf16 has 8 bits of mantissa: agreement to a few 1e-2 on O(1) logits, not 1e-4.
    assert np.abs(got - torch_logits(ref_model, ids)).max() < 0.1
    assert model.embed.embedding[...].dtype == jnp.float32  # master params stay float32
