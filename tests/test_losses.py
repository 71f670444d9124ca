"""Losses against hand-computed values (TRL's DPO formulas)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solar_jax.training.losses import cross_entropy, dpo_loss, sequence_log_probs

# Fixed sequence log-probs: policy chosen/rejected, reference chosen/rejected.
PC, PR, RC, RR = -10.0, -14.0, -11.0, -13.0  # h = (PC - PR) - (RC - RR) = 4 - 2 = 2
BETA = 0.1


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("loss_type, smoothing, expected", [
    ("sigmoid", 0.0, -math.log(_sig(0.2))),
    ("sigmoid", 0.1, -math.log(_sig(0.2)) * 0.9 - math.log(_sig(-0.2)) * 0.1),  # cDPO
    ("robust", 0.1, (-math.log(_sig(0.2)) * 0.9 + math.log(_sig(-0.2)) * 0.1) / 0.8),
    ("hinge", 0.0, 1 - 0.2),
    ("ipo", 0.0, (2 - 1 / (2 * BETA)) ** 2),
])
def test_dpo_losses_equal_trl_formulas(loss_type, smoothing, expected):
    arr = lambda v: jnp.asarray([v], jnp.float32)
    losses, cr, rr = dpo_loss(arr(PC), arr(PR), arr(RC), arr(RR), beta=BETA, loss_type=loss_type,
                              label_smoothing=smoothing)
    assert float(losses[0]) == pytest.approx(expected, rel=1e-6)
    assert float(cr[0]) == pytest.approx(BETA * (PC - RC))  # 0.1
    assert float(rr[0]) == pytest.approx(BETA * (PR - RR))  # -0.1


def test_policy_equal_reference_gives_log2_and_no_reference_gradient():
    p = jnp.asarray([-3.0, -7.5], jnp.float32)
    r = jnp.asarray([-4.0, -2.0], jnp.float32)

    def loss(pc, pr, rc, rr):
        return dpo_loss(pc, pr, rc, rr)[0].mean()

    assert float(loss(p, r, p, r)) == pytest.approx(math.log(2), rel=1e-6)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(p, r, p, r)
    assert np.any(np.asarray(grads[0]) != 0)
    np.testing.assert_array_equal(np.asarray(grads[2]), 0.0)
    np.testing.assert_array_equal(np.asarray(grads[3]), 0.0)


def test_sequence_log_probs_sum_completion_tokens_only():
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]], jnp.float32))
    targets = jnp.asarray([[0, 1, 2]])
    mask = jnp.asarray([[0.0, 1.0, 1.0]])  # the first token is prompt
    assert float(sequence_log_probs(logits, targets, mask)[0]) == pytest.approx(math.log(0.8) + math.log(0.6), rel=1e-6)
    assert float(sequence_log_probs(logits, targets, mask, average=True)[0]) == pytest.approx(
        (math.log(0.8) + math.log(0.6)) / 2, rel=1e-6)
    s, n = cross_entropy(logits, targets, mask)
    assert float(n) == 2 and float(s) == pytest.approx(-(math.log(0.8) + math.log(0.6)), rel=1e-6)
