"""Attention kernels against the plain XLA path: splash (TPU Pallas, run here in interpret
mode) on packed documents, with a sliding window, and inside a sharded train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from solar_jax.parallel import sharding
from solar_jax.models import attention
from solar_jax.models import transformer as model_lib
from solar_jax.errors import SolarError
from solar_jax.models.config import ModelConfig

CONFIG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, max_position_embeddings=512)


def _batch(b=4, t=128, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, (b, t)).astype(np.int32)
    segments = np.ones((b, t), np.int32)
    segments[0, 50:] = 2  # two packed documents
    segments[1, 100:] = 0  # padding
    segments[2, 30:90] = 2
    segments[2, 90:] = 3
    return jnp.asarray(tokens), jnp.asarray(segments)


def _models(config, impl):
    plain = model_lib.Transformer(config, rngs=nnx.Rngs(0), attention_impl="xla")
    other = model_lib.model_from_params(config, model_lib.param_dict(plain), attention_impl=impl)
    return plain, other


@pytest.mark.parametrize("window", [None, 40])
def test_splash_equals_the_plain_path_logits_and_gradients(window):
    config = ModelConfig(**{**CONFIG.__dict__, "model_type": "mistral" if window else "llama",
                            "sliding_window": window})
    plain, splash = _models(config, "splash")
    tokens, segments = _batch()
    keep = (segments > 0)[..., None]
    a, b = plain(tokens, segment_ids=segments), splash(tokens, segment_ids=segments)
    np.testing.assert_allclose(np.where(keep, b, 0), np.where(keep, a, 0), atol=2e-5)

    def loss(model):
        return jnp.sum(jnp.where(keep, model(tokens, segment_ids=segments), 0) ** 2) * 1e-3

    ga, gb = nnx.grad(loss)(plain), nnx.grad(loss)(splash)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(y, x, atol=2e-4, rtol=2e-3)


def test_splash_inside_a_sharded_jit_equals_one_device():
    # The kernel runs per device under shard_map, on the rows and heads the placement says.
    plain, _ = _models(CONFIG, "splash")
    tokens, segments = _batch(b=8)
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    params = model_lib.param_dict(plain)
    placement = sharding.model_placement({k: v.shape for k, v in model_lib.flat_params(params).items()}, mesh)
    assert (placement.batch_axes, placement.batch_shards, placement.head_axis) == (("fsdp",), 4, "tensor")
    assert dict(placement.layer_weights)["attn/q"] == jax.sharding.PartitionSpec("tensor", None, "fsdp")
    splash = model_lib.model_from_params(CONFIG, params, attention_impl="splash", placement=placement)
    graphdef, state = nnx.split(splash)
    with jax.set_mesh(mesh):
        batch_sh = sharding.batch_sharding(mesh)
        fn = jax.jit(lambda s, t, g: nnx.merge(graphdef, s)(t, segment_ids=g))
        tokens_sh, segments_sh = jax.device_put(tokens, batch_sh), jax.device_put(segments, batch_sh)
        assert "shard_map" in str(fn.trace(state, tokens_sh, segments_sh).jaxpr)
        out = fn(state, tokens_sh, segments_sh)
    keep = (segments > 0)[..., None]
    np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, plain(tokens, segment_ids=segments), 0),
                               atol=2e-5)


def test_auto_picks_the_platforms_kernel_and_splash_checks_seq_len():
    assert attention.resolve("auto", "tpu") == "splash"
    assert attention.resolve("auto", "gpu") == "cudnn"
    assert attention.resolve("auto", "cpu") == "xla"
    with pytest.raises(SolarError, match="multiple of 128"):
        attention.check_seq_len("splash", 100)
    attention.check_seq_len("auto", 100)  # xla on this CPU
