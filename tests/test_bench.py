"""The benchmark command: the commands' conventions, and one benchmark end to end (both
sides in their own processes, the peer's through peers.py) on a tiny model."""

import re
import sys

import pytest

from conftest import run_command
from solar_jax.bench import __main__ as bench_main
from solar_jax.bench import vs_maxtext
from solar_jax.config_files import load_config
from solar_jax.errors import SolarError


def test_bench_without_a_name_says_which_in_one_line():
    r = run_command("solar_jax.bench", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "configs/bench.py:NAME" in r.stderr and "convert, upscale, merge, train, dpo, eval, plan" in r.stderr


def test_bench_refuses_an_unknown_key_in_one_line():
    r = run_command("solar_jax.bench", "--config=configs/bench.py:convert", "--config.repeat=1", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "repeats" in r.stderr, r.stderr


# Each benchmark's own checks run in this process (the command's exit-2 edge is above).
@pytest.mark.parametrize("name, values, message", [
    ("train", dict(model="big"), "unknown model 'big' for the train benchmark; known: smollm2-44, tiny, all"),
    ("eval", dict(requests="mixed"), "unknown request kind 'mixed' for the eval benchmark; known: choices, distinct"),
    ("plan_tpu", dict(devices="v5p-8,v9-8"), "unknown device 'v9-8'"),
    ("data", dict(chip="TPU v9", tokens_per_chip=0.0), "unknown chip 'TPU v9'; known: TPU v4"),
])
def test_each_benchmark_checks_its_keys_before_it_runs(name, values, message, capsys):
    c = load_config("bench.py", name)
    c.update(values)
    with pytest.raises(SolarError) as raised:
        bench_main.main(c)
    assert str(raised.value).startswith(message), raised.value
    assert capsys.readouterr().out == ""


def test_convert_benchmark_runs_both_sides_and_prints_the_ratio(tiny_hf):
    _, hf_dir = tiny_hf("llama_gqa")
    r = run_command("solar_jax.bench", "--config=configs/bench.py:convert", f"--config.model_dir={hf_dir}",
                    "--config.repeats=1", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^solar_jax +\d+\.\d+ +\d", r.stdout, re.M) and re.search(r"^transformers +\d", r.stdout, re.M)
    ratio = re.search(r"ratio solar_jax/transformers: time (\d+\.\d+)x", r.stdout)
    assert ratio and float(ratio.group(1)) > 0, r.stdout
    assert re.search(r"peak above baseline .* (MET|MISSED)", r.stdout), r.stdout


def test_data_benchmark_prints_text_tokenize_and_shard_rates_against_the_need():
    r = run_command("solar_jax.bench", "--config=configs/bench.py:data", "--config.documents=40",
                    "--config.seq_len=128", "--config.batch_size=4", "--config.hosts=2", "--config.batches=2",
                    "--config.workers=1", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^need \(estimate\): 4 x TPU v5p chips from plan --compile's step estimate on SOLAR 10.7B, "
                     r"seq 128: 4,942 tokens/s per chip, 19,768 per host$", r.stdout, re.M), r.stdout
    for line in ("text:", "shards:"):
        assert re.search(rf"^{line} .*\(\d+\.\d+x the need\)", r.stdout, re.M), r.stdout
    assert re.search(r"^tokenize: .* with 1 workers", r.stdout, re.M)


# A stand-in MaxText checkout: train_compile's two names that maxtext_worker.py uses. Its main
# checks the overrides it is given and compiles a small function (on the CPU) through
# jit_and_compile, which the worker wraps to save the HLO and the analyses.
FAKE_TRAIN_COMPILE = '''
import jax, jax.numpy as jnp
jax.config.update("jax_platforms", "cpu")

def jit_and_compile(fn, arg):
    return jax.jit(fn).lower(arg).compile()

def main(argv):
    overrides = dict(a.split("=", 1) for a in argv[2:])
    assert argv[1].endswith("base.yml"), argv
    assert overrides["compile_topology"] == "v5p-8" and overrides["base_num_decoder_layers"] == "1", overrides
    assert overrides["per_device_batch_size"] == "1" and overrides["max_target_length"] == "512", overrides
    assert overrides["scan_layers"] == "True" and overrides["remat_policy"] == "full", overrides
    jit_and_compile(lambda x: jnp.tanh(x @ x.T) @ x, jnp.ones((2048, 2048), jnp.float32))
'''


def test_maxtext_benchmark_reads_both_sides_alike_and_checks_its_inputs(tmp_path):
    package = tmp_path / "maxtext" / "src" / "maxtext" / "trainers" / "pre_train"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "train_compile.py").write_text(FAKE_TRAIN_COMPILE)
    args = ["solar_jax.bench", "--config=configs/bench.py:maxtext", f"--config.maxtext_dir={tmp_path / 'maxtext'}",
            f"--config.maxtext_python={sys.executable}", "--config.slice=v5p-8", "--config.layers=1",
            "--config.rows_per_chip=1", "--config.seq_len=512", "--config.loops=scanned", "--config.maxtext_flags=own"]
    r = run_command(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^\| solar_jax \| scanned \| solar_jax \| \d+\.\d\d \|", r.stdout, re.M), r.stdout
    # the stand-in's analyses came back through the worker's files: its peak (the 16 MiB argument
    # and output) is read, and the ratios are printed (temporaries '-': the CPU step has none)
    theirs = re.search(r"^\| MaxText \| scanned \| own \| \d+\.\d\d \| (\d+\.\d\d) \|", r.stdout, re.M)
    assert theirs and float(theirs.group(1)) > 0, r.stdout
    assert re.search(r"^scanned, solar_jax / MaxText \(own flags\): temporaries (\d+\.\d+x|-), .* est\. step \d+\.\d+x",
                     r.stdout, re.M), r.stdout
    assert "ESTIMATES, not measurements" in r.stdout
    good = load_config("bench.py", "maxtext")
    good.update(maxtext_dir=str(tmp_path / "maxtext"), maxtext_python=sys.executable, slice="v5p-8")
    for values, match in ((dict(maxtext_dir="/nonexistent"), "must be a MaxText checkout"),
                          (dict(remat="dots"), "the policies both frameworks have are full"),
                          (dict(loops="scanned,rolled"), "--config.loops takes a comma-separated list"),
                          (dict(slice="v9-8"), "unknown device 'v9-8'")):
        bad = good.copy_and_resolve_references()
        bad.update(values)
        with pytest.raises(SolarError, match=re.escape(match)):
            vs_maxtext.check(bad)
