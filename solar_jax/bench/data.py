"""Data delivery: tokens per second one host hands to the train step, from text and from
token shards, against what one TPU host needs at the SOLAR step's throughput.

On one corpus (the built-in text repeated to `documents` documents in a .jsonl file, the
real model's tokenizer), each measured in this process:
  text     load_corpus (read + tokenize everything, as a run's start does) + packing
  tokenize solar_jax.tokenize's writer (all workers), once per corpus
  shards   packed batches read from the shards (one stream, the whole batch), and per
           host with data.stream_per_row (the rows of one host of `hosts`)
The need: chips per host x the step's tokens/s per chip: by default the figure `plan
--compile` estimates for the SOLAR CPT step on v5p-128 (XLA's TPU cost model and the
collective bytes; configs/bench.py:data's tokens_per_chip), or with tokens_per_chip=0 peak
FLOP/s x mfu / train FLOPs per token of the SOLAR model (metrics.train_flops_per_token).
Estimates both, not measurements.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import ml_collections

from solar_jax.config_files import load_config
from solar_jax.errors import SolarError
from solar_jax.models.config import preset
from solar_jax.pipelines import tokenize as tokenize_lib
from solar_jax.pipelines.recipe import resolve_model_dir
from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import text as text_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.training.metrics import PEAK_FLOPS, train_flops_per_token


def _pull(batches, count: int, rows: int, seq_len: int) -> float:
    """Seconds to take `count` batches; returns tokens/s."""
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * rows * seq_len / (time.perf_counter() - start)


def main(c: ml_collections.ConfigDict) -> None:
    if c.chip not in PEAK_FLOPS:
        raise SolarError(f"unknown chip {c.chip!r}; known: {', '.join(PEAK_FLOPS)}")
    if c.hosts <= 0 or c.batch_size % c.hosts:
        raise SolarError(f"batch_size ({c.batch_size}) must be a multiple of hosts ({c.hosts})")
    if c.tokens_per_chip > 0:
        per_chip, source = c.tokens_per_chip, "from plan --compile's step estimate"
    else:
        per_chip = PEAK_FLOPS[c.chip] * c.mfu / train_flops_per_token(preset("solar-10.7b"), c.seq_len)
        source = f"at MFU {c.mfu:.0%}"
    need = per_chip * c.chips_per_host
    print(f"need (estimate): {c.chips_per_host} x {c.chip} chips {source} on SOLAR 10.7B, seq {c.seq_len}: "
          f"{per_chip:,.0f} tokens/s per chip, {need:,.0f} per host")
    model_dir = str(resolve_model_dir(c.model_dir))
    tokenizer = tokenizer_lib.load_tokenizer("", model_dir)
    pieces = text_lib.builtin_documents("pydoc")
    docs = [pieces[i % len(pieces)] for i in range(c.documents)]
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        corpus = Path(scratch) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(dict(text=d)) + "\n" for d in docs))
        cfg = load_config("cpt.py")
        cfg.data.train_files, cfg.seq_len, cfg.batch_size = str(corpus), c.seq_len, c.batch_size

        start = time.perf_counter()
        text = pretrain_lib.load_corpus(cfg.data, tokenizer, cfg.seed)
        prepare = time.perf_counter() - start
        tokens = text.train_tokens
        packing = _pull(iter(pretrain_lib.train_dataset(text.train, c.seq_len, c.batch_size, cfg.seed)), c.batches,
                        c.batch_size, c.seq_len)
        text_rate = 1 / (1 / (tokens / prepare) + 1 / packing)  # tokenizing, then packing, each token once
        print(f"text:     {tokens:,} tokens read + tokenized in {prepare:.1f} s, packed at {packing:,.0f} tokens/s: "
              f"{text_rate:,.0f} tokens/s ({text_rate / need:.1f}x the need)")

        shards = Path(scratch) / "tokens"
        shards.mkdir()
        start = time.perf_counter()
        tokenize_lib.write_shards(tokenize_lib.documents(ml_collections.ConfigDict(dict(
            data_files=str(corpus), text_field="text", builtin="pydoc"))), tokenizer, ("", model_dir), shards,
            documents_per_shard=max(1, c.documents // 8), add_bos=True, add_eos=True, num_workers=c.workers)
        written = time.perf_counter() - start
        print(f"tokenize: {tokens:,} tokens into shards in {written:.1f} s with {c.workers} workers "
              f"({tokens / written:,.0f} tokens/s, once per corpus)")

        cfg.data.train_files = str(shards)
        sharded = pretrain_lib.load_corpus(cfg.data, tokenizer, cfg.seed)
        whole = _pull(iter(pretrain_lib.train_dataset(sharded.train, c.seq_len, c.batch_size, cfg.seed)), c.batches,
                      c.batch_size, c.seq_len)
        rows = c.batch_size // c.hosts
        streams = pretrain_lib.RowStreams(sharded.train, c.seq_len, c.batch_size, range(rows), cfg.seed)
        host = _pull(streams, c.batches, rows, c.seq_len)
        print(f"shards:   the whole batch at {whole:,.0f} tokens/s ({whole / need:.1f}x the need); "
              f"stream_per_row, one host's {rows} of {c.batch_size} rows: {host:,.0f} tokens/s "
              f"({host / need:.1f}x the need)")
