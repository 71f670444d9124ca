"""HF import/export: bit-exact round trips, transformers loads the export, bad input."""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from solar_jax.weights import hf
from solar_jax.errors import SolarError
from tests.conftest import make_tiny_hf, run_command


def hf_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF dir as torch-read numpy (bf16 as raw int16 bits)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                out[k] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    return out


@pytest.mark.parametrize("name, dtype", [("llama_gqa", "float32"), ("mistral_window", "bfloat16"),
                                         ("llama_tied_llama3", "float32")])
def test_round_trip_is_bit_exact_and_transformers_loads_it(tmp_path, name, dtype):
    ref_model, src = make_tiny_hf(name, tmp_path / "src", dtype=dtype)
    model = hf.load_hf(src)
    out = hf.save_hf(model, tmp_path / "out", dtype=dtype)
    before, after = hf_tensors(src), hf_tensors(out)
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype, key
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor(np.random.RandomState(0).randint(0, 128, (1, 10)))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(ids).logits.numpy(), ref_model(ids).logits.numpy())


def test_sharded_export_with_index_reimports(tmp_path, tiny_hf):
    _, src = tiny_hf("llama_gqa")
    model = hf.load_hf(src)
    out = hf.save_hf(model, tmp_path / "out", max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in hf_tensors(out).values())
    assert transformers.AutoModelForCausalLM.from_pretrained(str(out)) is not None
    ids = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(hf.load_hf(out)(ids)), np.asarray(model(ids)))


def test_tokenizer_and_generation_config_are_copied(real_model_dir, tmp_path):
    out = tmp_path / "out"
    r = run_command("solar_jax.convert", f"--config.model_dir={real_model_dir}", f"--config.output_dir={out}",
                    "--config.dtype=bfloat16", "--config.max_shard_size=100MB")
    assert r.returncode == 0, r.stderr
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        assert (out / name).is_file(), name
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok("Paris")["input_ids"] == transformers.AutoTokenizer.from_pretrained(str(real_model_dir))("Paris")["input_ids"]
    assert len(list(out.glob("model-*.safetensors"))) == 3
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_torch_bin_checkpoint_loads_with_weights_only(tmp_path, tiny_hf):
    ref_model, src = tiny_hf("llama_gqa")
    d = tmp_path / "bin"
    shutil.copytree(src, d)
    (d / "model.safetensors").unlink()
    torch.save({k: v.contiguous() for k, v in ref_model.state_dict().items()}, d / "pytorch_model.bin")
    ids = jnp.asarray([[5, 6, 7]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(hf.load_hf(d)(ids)), np.asarray(hf.load_hf(src)(ids)))


def test_tied_checkpoint_with_redundant_lm_head(tmp_path, tiny_hf):
    _, src = tiny_hf("llama_tied_llama3")
    d = tmp_path / "tied"
    shutil.copytree(src, d)
    tensors = hf_tensors(d)
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}, d / "model.safetensors",
              metadata={"format": "pt"})
    hf.load_hf(d)  # an identical copy is accepted
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"] + 1}, d / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(SolarError, match="lm_head.weight differs"):
        hf.load_hf(d)


# ---- bad input: a clear one-line error naming the problem --------------------------------

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(d, edit):
    tensors = edit(hf_tensors(d))
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def test_unexpected_missing_and_duplicate_keys_are_named(tmp_path, tiny_hf):
    _, src = tiny_hf("llama_gqa")
    d = _copy(src, tmp_path / "extra")
    _rewrite_tensors(d, lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(SolarError, match=r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias"):
        hf.load_hf(d)
    d = _copy(src, tmp_path / "missing")
    _rewrite_tensors(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.2.mlp.up_proj.weight"})
    with pytest.raises(SolarError, match=r"missing tensor model\.layers\.2\.mlp\.up_proj\.weight"):
        hf.load_hf(d)
    d = _copy(src, tmp_path / "dup")
    tensors = hf_tensors(d)
    (d / "model.safetensors").unlink()
    save_file(tensors, d / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({"model.norm.weight": tensors["model.norm.weight"]}, d / "model-00002-of-00002.safetensors",
              metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tensors}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(SolarError, match=r"duplicate tensor model\.norm\.weight"):
        hf.load_hf(d)


def _expect_exit_2(tmp_path, model_dir, *extra, match):
    out = tmp_path / "out"
    r = run_command("solar_jax.convert", f"--config.model_dir={model_dir}", f"--config.output_dir={out}", *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*")), "something was written"
    return lines[0]


def test_command_missing_config_json(tmp_path, tiny_hf):
    d = _copy(tiny_hf("llama_gqa")[1], tmp_path / "noconfig")
    (d / "config.json").unlink()
    _expect_exit_2(tmp_path, d, match="no config.json")


def test_command_unsupported_model_type_lists_supported(tmp_path, tiny_hf):
    d = _copy(tiny_hf("llama_gqa")[1], tmp_path / "gpt2")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    _expect_exit_2(tmp_path, d, match="supported: llama, mistral")


def test_command_truncated_safetensors(tmp_path, tiny_hf):
    d = _copy(tiny_hf("llama_gqa")[1], tmp_path / "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 1000])
    _expect_exit_2(tmp_path, d, match="truncated safetensors file")


def test_command_shape_mismatch_names_the_tensor(tmp_path, tiny_hf):
    d = _copy(tiny_hf("llama_gqa")[1], tmp_path / "shape")
    _rewrite_tensors(d, lambda t: {**t, "model.layers.1.mlp.down_proj.weight": np.zeros((64, 95), np.float32)})
    line = _expect_exit_2(tmp_path, d, match="model.layers.1.mlp.down_proj.weight")
    assert "(64, 95)" in line and "(64, 96)" in line


def test_command_unknown_dtype_name(tmp_path, tiny_hf):
    _expect_exit_2(tmp_path, tiny_hf("llama_gqa")[1], "--config.dtype=float8", match="unknown dtype 'float8'")


def test_command_refuses_non_empty_output_dir(tmp_path, tiny_hf):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_command("solar_jax.convert", f"--config.model_dir={tiny_hf('llama_gqa')[1]}", f"--config.output_dir={out}")
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = run_command("solar_jax.convert", f"--config.model_dir={tiny_hf('llama_gqa')[1]}", f"--config.output_dir={out}",
                    "--config.overwrite=True")
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_command_unknown_config_key(tmp_path):
    r = run_command("solar_jax.convert", "--config.modeldir=x")
    assert r.returncode == 2 and "model_dir" in r.stderr and "Traceback" not in r.stderr
