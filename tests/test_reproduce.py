"""The reproduce pipeline's arms and its rank correlation (no training here; the quick run
in test_recipe.py trains them)."""

import numpy as np
import pytest

from solar_jax.errors import SolarError
from solar_jax.pipelines.reproduce import plan_arms, rank_correlation, seam_correlations
from tests.conftest import load_config, override


def test_default_arms_are_the_m_sweep_then_the_same_depth_alternatives():
    n = 30
    distance = np.random.default_rng(0).uniform(0.1, 0.5, (n + 1, n + 1))
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0)
    arms = plan_arms(load_config("reproduce.py"), n, distance)
    assert [a.name for a in arms] == ["m0", "m2", "m4", "m6", "m8", "m10", "m12", "identity", "scaled", "seam",
                                      "llama_pro", "llama_pro_new"]
    assert [a.layers for a in arms[:7]] == [60, 56, 52, 48, 44, 40, 36]
    assert all(a.layers == 44 for a in arms[7:])  # same depth (and parameter count) as m = 8
    by = {a.name: a for a in arms}
    assert by["m8"].mismatch == distance[22, 8] and by["m8"].overrides == dict(upscale_m=8)
    assert by["identity"].overrides == dict(upscale_m=8, upscale_init="identity")
    seam = by["seam"].overrides["upscale_slices"]
    a, b = int(seam.split(",")[0].split(":")[1]), int(seam.split(",")[1].split(":")[0])
    assert a - b == 14 and by["seam"].mismatch == distance[a, b] == min(distance[b + 14, b] for b in range(17))
    assert by["llama_pro"].overrides == dict(upscale_slices="expand:14", upscale_init="identity", upscale_train="all")
    assert by["llama_pro_new"].overrides["upscale_train"] == "new"


@pytest.mark.parametrize("keys, message", [
    (dict(arms="identity,frozen"), "unknown arm 'frozen'"),
    (dict(compare_m=15), "compare_m must satisfy 0 <= m < n / 2"),
    (dict(seam_m="31"), "m must satisfy 0 <= m < n"),
])
def test_bad_arms_are_refused_before_any_work(keys, message):
    c = override(load_config("reproduce.py"), **keys)
    with pytest.raises(SolarError, match=message):
        plan_arms(c, 30, np.zeros((31, 31)))


def test_rank_correlation_is_spearmans():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share a rank; inf (never reached the base) ranks last
    assert rank_correlation([0.1, 0.2, 0.3], [5.0, float("inf"), float("inf")]) == pytest.approx(np.sqrt(3) / 2)
    assert rank_correlation([1, 2], [1, 2]) is None
    assert rank_correlation([1, 2, 3], [7, 7, 7]) is None
    entries = [dict(name=f"m{m}", mismatch=d, initial=i, final=f, steps_to_base=s)
               for m, d, i, f, s in ((0, 0.5, 8.0, 2.9, None), (4, 0.4, 5.0, 2.7, 18.0), (8, 0.25, 3.4, 2.6, 8.0))]
    entries.append(dict(name="identity", mismatch=0.25, initial=3.0, final=2.5, steps_to_base=0.0))  # not in the sweep
    corr = seam_correlations(entries)
    assert corr == dict(points=3, initial_loss=pytest.approx(1.0), final_loss=pytest.approx(1.0),
                        steps_to_base=pytest.approx(1.0))
