"""Merge formulas (mergekit semantics) on hand-computed arrays, in memory and streamed."""

import ml_dtypes
import numpy as np
import pytest

import solar_jax as sj
from solar_jax.surgery import merge as M
from solar_jax.surgery import merge_math
from solar_jax.errors import SolarError
from tests.conftest import make_tiny_hf, run_command
from tests.test_hf_io import hf_tensors


def f32(*rows):
    return np.asarray(rows, np.float32)


def test_linear_normalises_weights():
    a, b = f32([1.0, 2.0, 4.0]), f32([3.0, 6.0, 0.0])
    out = merge_math.linear([a, b], [np.array([1.0]), np.array([3.0])])
    np.testing.assert_allclose(out, f32([2.5, 5.0, 1.0]), rtol=1e-7)
    raw = merge_math.linear([a, b], [np.array([1.0]), np.array([3.0])], normalize=False)
    np.testing.assert_allclose(raw, f32([10.0, 20.0, 4.0]), rtol=1e-7)
    with pytest.raises(SolarError, match="sum to zero"):
        merge_math.linear([a, b], [np.array([1.0]), np.array([-1.0])])


def _slerp64(t, a, b):
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64)
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * a64 + np.sin(t * theta) * b64) / np.sin(theta)


def test_slerp_endpoints_midpoint_and_colinear_fallback():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 64, 8)).astype(np.float32), rng.normal(size=(1, 64, 8)).astype(np.float32)
    np.testing.assert_array_equal(merge_math.slerp(np.array([0.0]), a, b), a)
    np.testing.assert_array_equal(merge_math.slerp(np.array([1.0]), a, b), b)
    np.testing.assert_allclose(merge_math.slerp(np.array([0.5]), a, b).ravel(), _slerp64(0.5, a, b), rtol=1e-5, atol=1e-6)
    # Hand-computed: orthogonal unit vectors at t = 0.5 -> (1, 1) / sqrt(2).
    np.testing.assert_allclose(merge_math.slerp(np.array([0.5]), f32([[1.0, 0.0]]), f32([[0.0, 1.0]])),
                               f32([[0.70710678, 0.70710678]]), rtol=1e-6)
    # Colinear (cos = 1 > 0.9995): lerp, so 2a at t = 0.25 gives 1.25 a (slerp would give a).
    np.testing.assert_allclose(merge_math.slerp(np.array([0.25]), a, 2 * a), 1.25 * a, rtol=1e-6)


def test_slerp_dot_products_accumulate_in_float64():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3_000_000)).astype(np.float32)
    b = (a + 0.07 * rng.normal(size=a.shape)).astype(np.float32)
    exact = np.einsum("lp,lp->l", a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(merge_math.dot64(a, b), exact, rtol=1e-13)


def test_gradient_anchors_and_filters_resolve_like_mergekit():
    ts = [i / 4 for i in range(5)]
    assert [M.evaluate_setting([0.0, 1.0], "x", t) for t in ts] == [0.0, 0.25, 0.5, 0.75, 1.0]
    anchors = [0.0, 0.5, 0.3, 0.7, 1.0]
    assert [M.evaluate_setting(anchors, "x", t) for t in (0.0, 0.5, 1.0)] == [0.0, 0.3, 1.0]
    assert M.evaluate_setting(anchors, "x", 0.3) == pytest.approx(0.8 * 0.5 + 0.2 * 0.3)
    t = [{"filter": "self_attn", "value": 0.2}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.5}]
    assert M.evaluate_setting(t, "model.layers.3.self_attn.q_proj.weight", 0.7) == 0.2
    assert M.evaluate_setting(t, "model.layers.3.mlp.up_proj.weight", 0.7) == pytest.approx(0.7)
    assert M.evaluate_setting(t, "model.norm.weight", 1.0) == 0.5


def _ta(method, base, xs, weights, densities, **kw):
    consensus, sparsify, normalize, rescale = M.TASK_ARITHMETIC[method]
    kw = dict(consensus=consensus, sparsify=sparsify, normalize=normalize, rescale=rescale, **kw)
    return merge_math.task_arithmetic(base, xs, [np.array([w]) for w in weights], [np.array([d]) for d in densities],
                             tensor_names=["t"], models=list(range(1, len(xs) + 1)), **kw)


def test_ties_trim_elect_disjoint_mean_by_hand():
    base = f32([[0.0, 0.0, 0.0, 0.0]])
    x1, x2 = f32([[1.0, -2.0, 3.0, 0.5]]), f32([[-1.0, 1.5, 2.0, -0.5]])
    # No trim: elected signs (+, -, +, +); kept: x1 everywhere, x2 only at index 2.
    np.testing.assert_allclose(_ta("ties", base, [x1, x2], [1, 1], [1, 1]), f32([[1.0, -2.0, 2.5, 0.5]]))
    # Trim to density 0.5: x1 -> (0, -2, 3, 0), x2 -> (0, 1.5, 2, 0); signs (+, -, +, +).
    np.testing.assert_allclose(_ta("ties", base, [x1, x2], [1, 1], [0.5, 0.5]), f32([[0.0, -2.0, 2.5, 0.0]]))
    # Task arithmetic: base + sum w_i (x_i - base), no normalisation.
    np.testing.assert_allclose(_ta("task_arithmetic", base + 1, [x1, x2], [0.5, 2.0], [1, 1]),
                               1 + 0.5 * (x1 - 1) + 2.0 * (x2 - 1), rtol=1e-6)


def test_dare_keeps_a_seeded_bernoulli_fraction_and_rescales():
    base = np.zeros((1, 20_000), np.float32)
    x = base + 1.0
    out = _ta("dare_linear", base, [x], [1.0], [0.3], seed=5)
    kept = out != 0
    assert abs(kept.mean() - 0.3) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.3, rtol=1e-6)  # kept deltas scaled by 1/density
    np.testing.assert_array_equal(out, _ta("dare_linear", base, [x], [1.0], [0.3], seed=5))
    assert not np.array_equal(out, _ta("dare_linear", base, [x], [1.0], [0.3], seed=6))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    (_, a), (_, b) = make_tiny_hf("llama_gqa", d / "a", seed=1), make_tiny_hf("llama_gqa", d / "b", seed=2)
    return a, b


@pytest.mark.parametrize("kwargs", [dict(method="linear"), dict(method="slerp", t=0.5),
                                    dict(method="ties", density=0.5), dict(method="dare_ties", density=0.5)])
def test_merging_a_model_with_itself_returns_it(two_models, kwargs):
    a = sj.load_hf(two_models[0])
    if kwargs["method"] in ("ties", "dare_ties"):
        merged = sj.merge_models([a, a], base=a, **kwargs)
    else:
        merged = sj.merge_models([a, a], **kwargs)
    for (path, x), y in zip(sorted(M.model_lib.flat_params(M.model_lib.param_dict(a)).items()),
                            [v for _, v in sorted(M.model_lib.flat_params(M.model_lib.param_dict(merged)).items())]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def test_streamed_merge_equals_in_memory_merge(two_models, tmp_path):
    a_dir, b_dir = two_models
    a, b = sj.load_hf(a_dir), sj.load_hf(b_dir)
    t = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.8}, {"value": 0.3}]
    cases = [
        (dict(method="linear", weights=[0.25, 0.75]), ["--config.method=linear", "--config.weights=0.25,0.75"]),
        (dict(method="slerp", t=t), ["--config.method=slerp", "--config.t=0.3", "--config.t_self_attn=0,1",
                                     "--config.t_mlp=0.8"]),
    ]
    for kwargs, flags in cases:
        in_memory = sj.save_hf(sj.merge_models([a, b], **kwargs), tmp_path / f"mem-{kwargs['method']}")
        out = tmp_path / f"cmd-{kwargs['method']}"
        r = run_command("solar_jax.merge", f"--config.model_dir={a_dir},{b_dir}", f"--config.output_dir={out}", *flags)
        assert r.returncode == 0, r.stderr
        x, y = hf_tensors(in_memory), hf_tensors(out)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # The per-layer gradient reached the layers: layer 0 attention is model a, the last is b.
    s = hf_tensors(tmp_path / "cmd-slerp")
    np.testing.assert_array_equal(s["model.layers.0.self_attn.q_proj.weight"],
                                  hf_tensors(a_dir)["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(s["model.layers.2.self_attn.q_proj.weight"],
                                  hf_tensors(b_dir)["model.layers.2.self_attn.q_proj.weight"])


def test_yaml_ties_equals_config_form_and_tied_models(tmp_path):
    (_, base), (_, a), (_, b) = (make_tiny_hf("llama_tied_llama3", tmp_path / n, seed=s)
                                 for n, s in (("base", 0), ("a", 1), ("b", 2)))
    (tmp_path / "ties.yaml").write_text(f"""
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.5}}
merge_method: ties
base_model: {base}
dtype: bfloat16
""")
    r = run_command("solar_jax.merge", f"--config.yaml={tmp_path / 'ties.yaml'}", f"--config.output_dir={tmp_path / 'y'}")
    assert r.returncode == 0, r.stderr
    r = run_command("solar_jax.merge", "--config.method=ties", f"--config.base={base}", f"--config.model_dir={a},{b}",
                    "--config.weights=0.6,0.4", "--config.density=0.5", "--config.dtype=bfloat16",
                    f"--config.output_dir={tmp_path / 'c'}")
    assert r.returncode == 0, r.stderr
    y, c = hf_tensors(tmp_path / "y"), hf_tensors(tmp_path / "c")
    assert "lm_head.weight" not in y  # tied stays tied
    assert y.keys() == c.keys() and all(np.array_equal(y[k], c[k]) for k in y)
    # mergekit's numerics (bf16 task vectors, its dtype: bfloat16): the same merge to bf16
    # rounding of the deltas, but for the few elements whose rounded magnitudes move across
    # the trim's cut (each then a whole delta apart)
    r = run_command("solar_jax.merge", f"--config.yaml={tmp_path / 'ties.yaml'}", "--config.numerics=mergekit",
                    f"--config.output_dir={tmp_path / 'mk'}")
    assert r.returncode == 0, r.stderr
    mk = hf_tensors(tmp_path / "mk")
    assert mk.keys() == y.keys() and any(not np.array_equal(mk[k], y[k]) for k in y)
    for k in y:
        as_f32 = lambda bits: bits.view(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
        close = np.isclose(as_f32(mk[k]), as_f32(y[k]), rtol=2e-2, atol=1e-4)
        assert close.mean() > 0.95, (k, close.mean())
    import transformers

    assert transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "y")) is not None


def _exit2(*args, match):
    r = run_command("solar_jax.merge", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_bad_merge_input(two_models, tmp_path):
    a, b = two_models
    out = f"--config.output_dir={tmp_path / 'out'}"
    _, narrow = make_tiny_hf("llama_gqa", tmp_path / "narrow", intermediate_size=80)
    _exit2(f"--config.model_dir={a},{narrow}", out, match="model.layers.0.mlp.gate_proj.weight")
    _exit2(f"--config.model_dir={a},{b}", "--config.weights=1,-1", out, match="sum to zero")
    _exit2(f"--config.model_dir={a},{b}", "--config.method=model_soup", out, match="unknown merge method 'model_soup'")
    (tmp_path / "bad.yaml").write_text(f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: model_stock\n")
    _exit2(f"--config.yaml={tmp_path / 'bad.yaml'}", f"--config.output_dir={tmp_path / 'out'}",
           match="unsupported merge_method 'model_stock'; supported: linear, slerp")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SolarError, match="exactly two models"):
        M.MergeSpec("slerp", 3, params={"t": 0.5})
    with pytest.raises(SolarError, match="unknown numerics 'fast'; known: exact, mergekit"):
        M.MergeSpec("ties", 2, base=0, numerics="fast")
