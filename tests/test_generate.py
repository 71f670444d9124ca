import pytest
import torch

from solar_jax.weights import hf
from solar_jax.errors import SolarError
from solar_jax.inference.generate import generate


@pytest.mark.parametrize("name", ["mistral_window", "llama_tied_llama3"])
def test_greedy_with_kv_cache_equals_transformers(tiny_hf, name):
    ref_model, path = tiny_hf(name)
    model = hf.load_hf(path)
    prompts = [[5, 9, 17, 3, 22, 40, 7], [11, 2, 99]]  # left-padded together in one batch
    out = generate(model, prompts, 12)
    for prompt, tokens in zip(prompts, out):
        ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                                 eos_token_id=None)[0, len(prompt):].tolist()
        assert tokens == ref


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_hf):
    _, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    a = generate(model, prompts, 10, temperature=1.0, seed=3)
    assert a == generate(model, prompts, 10, temperature=1.0, seed=3)
    assert a != generate(model, prompts, 10, temperature=1.0, seed=4)
    assert generate(model, prompts, 10, temperature=0.7, top_k=1, seed=5) == generate(model, prompts, 10)
    # top_p tiny keeps only the most likely token: greedy again.
    assert generate(model, prompts, 10, temperature=1.0, top_p=1e-6, seed=6) == generate(model, prompts, 10)


def test_eos_stops_each_row(tiny_hf):
    _, path = tiny_hf("llama_gqa")
    model = hf.load_hf(path)
    greedy = generate(model, [[1, 2, 3]], 10)[0]
    eos = greedy[3]
    stopped = generate(model, [[1, 2, 3]], 10, eos_token_id=eos)[0]
    assert stopped == greedy[: greedy.index(eos) + 1]


def test_generate_rejects_bad_requests(tiny_hf):
    model = hf.load_hf(tiny_hf("llama_gqa")[1])
    with pytest.raises(SolarError, match="non-empty prompt"):
        generate(model, [[]], 4)
    with pytest.raises(SolarError, match="max_position_embeddings"):
        generate(model, [[1] * 250], 10)
