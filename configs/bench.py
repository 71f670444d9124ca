"""Benchmarks against the peers (see solar_jax/bench/__init__.py): one variant per benchmark.

  python -m solar_jax.bench --config=configs/bench.py:convert [--config.repeats=5]
  python -m solar_jax.bench --config=configs/bench.py:train --config.model=tiny --config.pairs=3
"""

import ml_collections

BENCHMARKS = ("convert", "upscale", "merge", "train", "dpo", "eval", "plan", "plan_tpu", "tpu", "maxtext", "data")


def get_config(arg=None):
    if arg not in BENCHMARKS:
        raise ValueError(f"name a benchmark: --config=configs/bench.py:NAME with NAME one of {', '.join(BENCHMARKS)}")
    c = ml_collections.ConfigDict()
    c.benchmark = arg
    if arg in ("convert", "upscale", "merge"):
        c.model_dir = ""  # an HF dir; "" = the real model SmolLM2-135M
        c.repeats = 3  # alternating runs per side; medians are printed
    if arg == "upscale":
        c.m = 8  # layers dropped at each seam (SOLAR: 8)
    if arg in ("upscale", "merge"):
        c.mergekit_venv = ""  # "" = ~/.cache/solar_jax/bench-mergekit-venv, made on first use
    if arg == "train":
        c.model = "all"  # smollm2-44 (SmolLM2-135M up-scaled 30 -> 44 layers), tiny, or all
        c.batch_size = 4
        c.seq_len = 128
        c.steps = 4  # timed steps per process (median), after the warm-up
        c.warmup = 2
        c.pairs = 2  # back-to-back solar_jax / torch pairs
        c.remat = ""  # solar_jax's remat policy; "" = the train config's
    if arg == "dpo":
        c.model = "smollm2"  # smollm2 or tiny
        c.steps = 6
        c.batch_size = 4
        c.seq_len = 160
    if arg == "eval":
        c.questions = 64  # x 4 requests: each question's 4 choices, or 4x the questions once each
        c.requests = "choices"  # choices (4 share a context) | distinct (nothing shared)
        c.batch_size = 16
        c.pairs = 2  # back-to-back solar_jax / lm-eval pairs
    if arg == "plan_tpu":
        c.devices = "v5p-8,v5litepod-4"  # the slices (or GPU hosts: h100x4) the sample steps are compiled for
        c.fit = False  # also refit and print the platform's table (TPU_... or GPU_ACTIVATION_COEFFICIENTS)
    if arg == "tpu":
        c.slices = "v5p-128,v4-128,v5e-256,v6e-256"
        c.tasks = "cpt,sft,dpo"
        c.overrides = ""  # KEY=VALUE,... applied to every task's config, e.g. remat=full
        c.search = False  # then plan --search on the first task and slice
        c.search_limit = 6
    if arg == "maxtext":
        c.maxtext_dir = ""  # a MaxText checkout (measured: commit e591f30)
        c.maxtext_python = ""  # a Python >= 3.12 with MaxText's requirements and solar_jax's jax[tpu]
        c.slice = "v5p-128"
        c.layers = 0  # 0: SOLAR 10.7B's 48; fewer for a quick look
        c.rows_per_chip = 4
        c.seq_len = 4096
        c.remat = "full"
        c.logits_dtype = "float32"  # solar_jax's; MaxText's default rounds them to bf16 ("compute")
        c.loops = "scanned,unrolled"  # the layer loop: scanned (both frameworks' default), unrolled
        c.maxtext_flags = "own,solar_jax"  # MaxText compiled with its own libtpu flags, with solar_jax's
    if arg == "data":
        c.model_dir = ""  # whose tokenizer; "" = the real model's
        c.documents = 4000  # the built-in corpus's pieces, repeated
        c.seq_len = 4096
        c.batch_size = 64  # global rows
        c.hosts = 16  # stream_per_row: one host of this many reads batch_size / hosts rows
        c.batches = 20
        c.workers = 2  # tokenize processes
        c.chip, c.chips_per_host, c.mfu = "TPU v5p", 4, 0.5  # the need: an estimate, see bench/data.py
        # The step's tokens/s per chip from `plan --compile` (XLA's TPU cost model: an
        # estimate) for configs/cpt.py:solar on v5p-128, seq 4096
        # (docs/results/tpu-2026-12-02/cpt-v5p-128.txt); 0 = from chip peak x mfu instead.
        c.tokens_per_chip = 4942.0
    return c
