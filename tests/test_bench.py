"""The benchmark command: the commands' conventions, and one benchmark end to end (both
sides in their own processes, the peer's through peers.py) on a tiny model."""

import re

from conftest import run_command


def test_bench_without_a_name_says_which_in_one_line():
    r = run_command("solar_jax.bench", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "configs/bench.py:NAME" in r.stderr and "convert, upscale, merge, train, dpo, eval, plan" in r.stderr


def test_bench_refuses_an_unknown_key_and_an_unknown_model_in_one_line():
    r = run_command("solar_jax.bench", "--config=configs/bench.py:convert", "--config.repeat=1", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "repeats" in r.stderr, r.stderr
    r = run_command("solar_jax.bench", "--config=configs/bench.py:train", "--config.model=big", timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: unknown model 'big' for the train benchmark; "
                                                      "known: smollm2-44, tiny, all"), r.stderr
    r = run_command("solar_jax.bench", "--config=configs/bench.py:eval", "--config.requests=mixed", timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: unknown request kind 'mixed' for the eval benchmark; "
                                                      "known: choices, distinct"), r.stderr
    r = run_command("solar_jax.bench", "--config=configs/bench.py:plan_tpu", "--config.devices=v5p-8,v9-8",
                    timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: unknown device 'v9-8'"), r.stderr


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
    bad = run_command("solar_jax.bench", "--config=configs/bench.py:data", "--config.chip=TPU v9",
                      "--config.tokens_per_chip=0", timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown chip 'TPU v9'; known: TPU v4"), bad.stderr
