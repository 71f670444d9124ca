"""The packed scoring engine (inference/packing.py): shared contexts and continuation
prefixes must give exactly what scoring each request on its own gives."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from solar_jax.inference import packing
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.models.config import ModelConfig
from solar_jax.models.transformer import Transformer


class _Tokenizer:
    eos_id = 0


def _model(sliding_window):
    config = ModelConfig(vocab_size=37, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=sliding_window)
    return Transformer(config, rngs=nnx.Rngs(0))


def _requests(seed):
    """Questions with 1-5 choices: shared stems, duplicates, empty contexts and continuations,
    some longer than max_len (truncated as the harness truncates)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(12):
        context = list(rng.integers(1, 37, rng.integers(0, 30)))
        stem = list(rng.integers(1, 37, rng.integers(0, 4)))
        for _ in range(rng.integers(1, 6)):
            out.append((context, stem + list(rng.integers(1, 37, rng.integers(0, 4)))))
        out.append(out[-1])  # the same request twice
    return out


def _direct(model, context, continuation, max_len):
    """Each request alone in its own row, padded on the right (a causal model's earlier
    positions do not see the padding), no sharing: the reference."""
    seq = ((context or [0]) + continuation)[-(max_len + 1):]
    n = min(len(continuation), len(seq) - 1)
    row = np.zeros((1, max_len), np.int32)
    row[0, :len(seq) - 1] = seq[:-1]
    logp = np.asarray(_log_softmax_logits(nnx.split(model)[0], nnx.split(model)[1], jnp.asarray(row)))[0]
    rows = range(len(seq) - 1 - n, len(seq) - 1)
    return np.array([logp[t, seq[t + 1]] for t in rows]), np.array([np.argmax(logp[t]) == seq[t + 1] for t in rows])


@functools.partial(jax.jit, static_argnums=0)
def _log_softmax_logits(graphdef, state, tokens):
    return jax.nn.log_softmax(nnx.merge(graphdef, state)(tokens), axis=-1)


@pytest.mark.parametrize("sliding_window", [None, 5])
def test_packed_scores_equal_each_request_scored_alone(sliding_window):
    model = _model(sliding_window)
    lm = LanguageModel(model, _Tokenizer(), batch_size=3, max_len=24)
    requests = _requests(seed=1 if sliding_window else 0)
    lps, greedy = lm._score_packed(requests)
    assert any(len(c) + len(x) > 25 for c, x in requests)  # truncation is exercised
    # A random model is rarely greedy: also ask whether the flags come from the right rows.
    assert any(g.size and g.all() for g in greedy) or any(g.any() for g in greedy)
    for (context, continuation), lp, g in zip(requests, lps, greedy):
        want_lp, want_greedy = _direct(model, list(context), list(continuation), 24)
        np.testing.assert_allclose(lp, want_lp, atol=2e-5, rtol=1e-5)
        np.testing.assert_array_equal(g, want_greedy)
    sums = lm.score_tokens(requests)
    assert [s for s, _ in sums] == pytest.approx([float(np.sum(lp)) for lp in lps], abs=1e-5)


def test_shared_prefixes_run_once_and_the_tree_has_the_documented_layout():
    # The module docstring's example: context c0 c1 c2, choices "#### 1 2" and "#### 5".
    c, hashes = [11, 12, 13], 20
    items = packing.make_items([(c, [hashes, 1, 2]), (c, [hashes, 5]), (c, [hashes, 5])], max_len=64)
    assert len(items) == 1 and items[0].length == 3 + 2  # nodes: (####,), (####, 1)
    b = next(packing.batches(items, rows_per_batch=1, max_len=64))
    assert b.tokens[0, :5].tolist() == [11, 12, 13, hashes, 1]
    assert b.positions[0, :5].tolist() == [0, 1, 2, 3, 4]
    assert b.reach[0, :5].tolist() == [4, 4, 4, 4, 4]
    assert b.items[0, :6].tolist() == [1, 1, 1, 1, 1, 0]
    # Distinct (column, target) pairs: (2, ####), (3, 1), (4, 2), (3, 5); the duplicate
    # request reads the same pairs.
    by_request = {owner: (b.columns[0, at].tolist(), b.targets[0, at].tolist()) for owner, _, at in b.requests}
    assert by_request[0] == ([2, 3, 4], [hashes, 1, 2])
    assert by_request[1] == by_request[2] == ([2, 3], [hashes, 5])


def test_siblings_do_not_see_each_other():
    items = packing.make_items([([1, 2], [3, 4, 5]), ([1, 2], [6, 7, 8])], max_len=64)
    b = next(packing.batches(items, rows_per_batch=1, max_len=64))
    # Depth-first: 1 2 | 3 4 | 6 7 -> the branch 3 4 ends at column 3.
    assert b.tokens[0, :6].tolist() == [1, 2, 3, 4, 6, 7]
    assert b.reach[0, :6].tolist() == [5, 5, 3, 3, 5, 5]
    from solar_jax.models.transformer import tree_attention_mask

    mask = np.asarray(tree_attention_mask(jnp.asarray(b.items), jnp.asarray(b.reach), jnp.asarray(b.positions), None))
    assert mask[0, 0, 4, :6].tolist() == [True, True, False, False, True, False]  # 6 sees 1 2 and itself
    assert mask[0, 0, 5, :6].tolist() == [True, True, False, False, True, True]


def test_a_set_of_requests_compiles_few_shapes():
    rng = np.random.default_rng(3)
    requests = [(list(rng.integers(1, 37, rng.integers(5, 60))), list(rng.integers(1, 37, rng.integers(1, 5))))
                for _ in range(200)]
    shapes = {(b.tokens.shape, b.columns.shape) for b in
              packing.batches(packing.make_items(requests, 128), rows_per_batch=8, max_len=128)}
    widths = {s[0][1] for s in shapes}
    assert len(widths) == 1 and widths.pop() % 16 == 0 and len(shapes) <= 4


def test_rolling_windows_are_the_harness_windows():
    from lm_eval import utils

    from solar_jax.evaluation.lm import rolling_windows

    for n in (0, 1, 5, 8, 9, 16, 17, 23, 40):
        ids = list(range(100, 100 + n))
        theirs = [utils.make_disjoint_window(w) for w in
                  utils.get_rolling_token_windows(token_list=ids, prefix_token=-1, max_seq_len=8, context_len=1)]
        ours = [([-1] if not c else c, x) for c, x in rolling_windows(ids, 8)]  # -1: the prefix token
        assert ours == [(list(c), list(x)) for c, x in theirs], n
