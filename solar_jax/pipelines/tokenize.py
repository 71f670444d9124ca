"""python -m solar_jax.tokenize: text files (or the built-in corpus) -> token shards, once.

Documents are read file by file, in order (data.read_documents' rules: .txt paragraphs,
.jsonl/.parquet text fields), cut into shards of documents_per_shard and tokenized by
num_workers processes at a time; data/token_shards.py says what is written and how training
reads it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.pipelines.recipe import resolve_model_dir
from solar_jax.data import text as text_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import token_shards
from solar_jax.weights.outdir import atomic_output_dir, check_output_dir


_WORKER: dict[str, Any] = {}


def _worker_init(tokenizer_spec: str, model_dir: str | None) -> None:
    _WORKER["tokenizer"] = tokenizer_lib.load_tokenizer(tokenizer_spec, model_dir)


def _worker_shard(path_stem: str, docs: list[str], add_bos: bool, add_eos: bool, dtype: str) -> dict[str, Any]:
    ids = text_lib.tokenize_documents(docs, _WORKER["tokenizer"], add_bos, add_eos, min_tokens=0)
    return token_shards.write_shard(Path(path_stem), ids, np.dtype(dtype))


def _chunks(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_shards(docs: Iterable[str], tokenizer, tokenizer_spec: tuple[str, str | None], out: Path, *,
                 documents_per_shard: int, add_bos: bool, add_eos: bool, num_workers: int) -> dict[str, Any]:
    """Tokenizes `docs` (streamed, in order) into shards under `out`, num_workers processes
    at a time (each loads the tokenizer from tokenizer_spec = (spec, model_dir)); writes and
    returns the manifest."""
    dtype = token_shards.token_dtype(tokenizer.vocab_size)
    chunks = _chunks(docs, documents_per_shard)
    entries: list[dict[str, Any]] = []
    if num_workers <= 1:
        for i, chunk in enumerate(chunks):
            ids = text_lib.tokenize_documents(chunk, tokenizer, add_bos, add_eos, min_tokens=0)
            entries.append(token_shards.write_shard(out / f"part-{i:05d}", ids, dtype))
    else:
        context = multiprocessing.get_context("spawn")  # fork would copy the tokenizer's threads
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_init,
                                                    initargs=tokenizer_spec) as pool:
            pending: list[concurrent.futures.Future] = []
            for i, chunk in enumerate(chunks):
                pending.append(pool.submit(_worker_shard, str(out / f"part-{i:05d}"), chunk, add_bos, add_eos,
                                           dtype.name))
                if len(pending) - len(entries) >= 2 * num_workers:  # bounds the documents in flight
                    entries.append(pending[len(entries)].result())
            entries += [f.result() for f in pending[len(entries):]]
    return token_shards.finish(out, entries, tokenizer, add_bos, add_eos)


def documents(c) -> Iterator[str]:
    """The documents of data_files (file by file, so one file is in memory at a time), or of
    the built-in corpus."""
    if not c.data_files:
        yield from text_lib.builtin_documents(c.builtin)
        return
    for path in text_lib.expand_files(c.data_files):
        yield from text_lib.read_documents([path], c.text_field)


def run(c) -> dict[str, Any]:
    if not c.output_dir:
        raise SolarError("output_dir is required (--config.output_dir=TOKENS)")
    check_output_dir(c.output_dir, c.overwrite)
    if c.documents_per_shard <= 0:
        raise SolarError(f"documents_per_shard must be positive, got {c.documents_per_shard}")
    model_dir = None if c.tokenizer else str(resolve_model_dir(c.model_dir))
    tokenizer = tokenizer_lib.load_tokenizer(c.tokenizer, model_dir)
    if c.data_files:
        text_lib.expand_files(c.data_files)  # a missing file: one line before anything is written
    workers = c.num_workers if c.num_workers > 0 else (os.cpu_count() or 1)
    start = time.perf_counter()
    with atomic_output_dir(c.output_dir, c.overwrite) as tmp:
        manifest = write_shards(documents(c), tokenizer, (c.tokenizer, model_dir), tmp,
                                documents_per_shard=c.documents_per_shard, add_bos=c.add_bos, add_eos=c.add_eos,
                                num_workers=workers)
    seconds = time.perf_counter() - start
    print(f"wrote {c.output_dir}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
          f"{len(manifest['shards'])} shards ({manifest['dtype']}) in {seconds:.1f} s "
          f"({manifest['tokens'] / max(seconds, 1e-9):,.0f} tokens/s, {workers} workers)")
    return manifest
