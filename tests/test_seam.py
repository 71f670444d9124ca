"""Seam diagnostics: the distances on a model whose layers are known, the recommendation,
and the command's input checks."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from solar_jax.errors import SolarError
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import preset
from solar_jax.surgery import seam
from solar_jax.pipelines import seam as seam_pipeline
from tests.conftest import load_config, override, run_command

IDENTITY_LAYERS = (2, 3)  # of 6


@pytest.fixture(scope="module")
def cosines():
    """A random 6-layer tiny model whose layers 2 and 3 write nothing (o = down = 0), over
    two batches with padding: (cos, tokens)."""
    config = dataclasses.replace(preset("tiny"), num_layers=6)
    flat = model_lib.flat_params(model_lib.param_dict(model_lib.Transformer(config, rngs=nnx.Rngs(0))))
    for path in ("layers/attn/o", "layers/mlp/down"):
        kernel = np.array(flat[path])
        kernel[list(IDENTITY_LAYERS)] = 0
        flat[path] = jax.numpy.asarray(kernel)
    params = model_lib.unflatten_params(flat)
    model = model_lib.model_from_params(config, params)
    rng = np.random.default_rng(0)
    segments = np.ones((2, 16), np.int32)
    segments[1, 10:] = 0  # padding: not counted
    batches = [dict(inputs=rng.integers(0, 256, (2, 16)).astype(np.int32), segment_ids=segments) for _ in range(2)]
    return seam.mean_cosines(model, batches)


def test_distances_are_symmetric_with_a_zero_diagonal(cosines):
    cos, tokens = cosines
    assert tokens == 2 * (16 + 10)
    d = seam.angular_distance(cos)
    assert d.shape == (7, 7)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diagonal(d), 0.0)
    assert (d >= 0).all() and (d <= 1).all()


def test_the_identity_layers_are_found(cosines):
    cos, _ = cosines
    change = seam.layer_change(cos)
    assert change.shape == (6,)
    quiet = [i for i, c in enumerate(change) if c < 1e-6]
    assert quiet == list(IDENTITY_LAYERS), change
    assert min(c for i, c in enumerate(change) if i not in IDENTITY_LAYERS) > 1e-3
    d = seam.angular_distance(cos)
    # h_2 = h_3 = h_4: the streams entering and leaving the identity layers are the same.
    assert d[2, 3] < 1e-3 and d[2, 4] < 1e-3 and d[3, 4] < 1e-3
    # So a seam across them costs nothing: 0:4,2:6 (overlap 2) hands h_4 to layer 2.
    rec = seam.recommend(d, 8)
    assert (rec.a, rec.b) == (4, 2) and rec.slices == "0:4,2:6" and rec.mismatch < 1e-3
    assert rec.solar_m == 2 and rec.reason.startswith("SOLAR's seam m = 2")


def test_recommendation_picks_the_smallest_mismatch_and_compares_solars_seam():
    n = 6
    d = np.full((n + 1, n + 1), 0.5)
    np.fill_diagonal(d, 0)
    d[5, 1] = d[1, 5] = 0.1  # overlap 4 -> 10 layers; SOLAR's m = 1 is (5, 1)
    d[6, 2] = d[2, 6] = 0.05
    rec = seam.recommend(d, 10)
    assert (rec.a, rec.b, rec.slices) == (6, 2, "0:6,2:6")
    assert rec.solar_m == 1 and rec.solar_mismatch == 0.1 and rec.mismatch == 0.05
    assert "0.050" in rec.reason and "SOLAR's m = 1 (0:5,1:6)" in rec.reason
    odd = seam.recommend(d, 9)  # an odd depth has no SOLAR seam
    assert odd.solar_m is None and odd.a - odd.b == 3
    assert seam.seam_mismatch(d) == {0: 0.5, 1: 0.1, 2: 0.5}


@pytest.mark.parametrize("target, m, message", [
    (0, 3, "m must satisfy 0 <= m < n / 2"),
    (0, -2, None),  # -2 < 0: the default m, not an error
    (6, -1, "target_layers 6 cannot be reached"),
    (13, -1, "need 6 < target_layers <= 12"),
])
def test_target_depth_checks(target, m, message):
    if message is None:
        assert seam.target_depth(6, target, m) == 2 * (6 - 2)
        return
    with pytest.raises(SolarError, match=message):
        seam.target_depth(6, target, m)


# Checked in this process (the pipeline's run); the command's one-line edge once, below.
@pytest.mark.parametrize("values, message", [
    ({"m": 15}, "m must satisfy 0 <= m < n / 2"),
    ({"target_layers": 61}, "target_layers 61 cannot be reached"),
    ({"data_files": "{empty}"}, "the text is empty"),
    ({"num_sequences": 10}, "num_sequences (10) must be a multiple of batch_size (16)"),
])
def test_bad_input_is_refused_before_writing(real_model_dir, tmp_path, values, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    c = load_config("seam.py")
    override(c, model_dir=str(real_model_dir), output_dir=str(tmp_path / "out"),
             **{k: v.format(empty=empty) if isinstance(v, str) else v for k, v in values.items()})
    with pytest.raises(SolarError) as raised:
        seam_pipeline.run(c)
    assert str(raised.value).startswith(message), raised.value
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line(real_model_dir, tmp_path):
    r = run_command("solar_jax.seam", "--config=configs/seam.py", f"--config.model_dir={real_model_dir}",
                    f"--config.output_dir={tmp_path / 'out'}", "--config.m=15")
    assert r.returncode == 2 and r.stderr.startswith("error: m must satisfy 0 <= m < n / 2"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_command_writes_json_table_and_plot_on_the_real_model(real_model_dir, tmp_path):
    out = tmp_path / "seam"
    r = run_command("solar_jax.seam", "--config=configs/seam.py", f"--config.model_dir={real_model_dir}",
                    f"--config.output_dir={out}", "--config.num_sequences=4", "--config.batch_size=4",
                    "--config.seq_len=64", "--config.m=8")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "seam.json").read_text())
    assert result["layers"] == 30 and result["tokens"] == 4 * 64
    assert len(result["distance"]) == 31 and len(result["layer_change"]) == 30
    assert sorted(map(int, result["seam_mismatch"])) == list(range(15))
    rec = result["recommendation"]
    assert rec["target_layers"] == 44 and rec["a"] - rec["b"] == 14 and rec["solar_m"] == 8
    assert rec["mismatch"] <= rec["solar_mismatch"]
    assert (out / "seam.png").stat().st_size > 10_000
    assert "For 44 layers" in (out / "seam.md").read_text()
    assert "for 44 layers" in r.stdout
    again = run_command("solar_jax.seam", "--config=configs/seam.py", f"--config.model_dir={real_model_dir}",
                        f"--config.output_dir={out}")
    assert again.returncode == 2 and "overwrite" in again.stderr
