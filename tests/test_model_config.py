import json

import pytest
import transformers

from solar_jax.errors import SolarError
from solar_jax.models.config import PRESETS, ModelConfig, RopeScaling


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
    config = PRESETS[name]
    hf = config.to_hf_config()
    assert ModelConfig.from_hf_config(json.loads(json.dumps(hf))) == config
    # transformers accepts what we write and reads back the same architecture.
    hf_config = transformers.AutoConfig.for_model(**hf)
    assert ModelConfig.from_hf_config(hf_config.to_dict()) == config


def test_transformers4_layout_with_rope_scaling():
    old = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0})
    config = ModelConfig.from_hf_config(old)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling("linear", 4.0)
    assert config.num_kv_heads == 4 and config.head_dim == 16


def test_param_counts_match_smollm2():
    # SmolLM2-135M: 134,515,008 parameters (tied embeddings counted once).
    assert PRESETS["smollm2-135m"].num_params() == 134_515_008
    # SOLAR 10.7B from the paper's 48-layer Mistral layout.
    assert round(PRESETS["solar-10.7b"].num_params() / 1e9, 1) == 10.7


@pytest.mark.parametrize("bad, message", [
    (dict(model_type="gpt2"), "supported: llama, mistral"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), "supported: default, linear, llama3"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(model_type="mistral", attention_bias=True), "attention_bias=true in a mistral"),
])
def test_unsupported_configs_are_named(bad, message):
    base = PRESETS["tiny"].to_hf_config()
    base.update(bad)
    with pytest.raises(SolarError, match=message):
        ModelConfig.from_hf_config(base)
