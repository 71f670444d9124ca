"""Continued-pretraining batches: documents -> tokens -> packed grain batches.

Documents (data/text.py) are tokenized once, held out for eval by a seeded split, sharded
by process, shuffled per epoch, and packed with grain's concat-then-split into rows of
seq_len tokens with segment ids, so attention never crosses documents. `inputs` and
`targets` (shifted by one) are packed together, so every row has complete targets.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import jax
import numpy as np

from solar_jax.errors import SolarError
from solar_jax.data import token_shards
from solar_jax.data.text import builtin_documents, expand_files, read_documents, split_eval, tokenize_documents
from solar_jax.weights import paths

def batch_rows(rows: Sequence[dict[str, np.ndarray]], batch: int, max_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """Rows -> fixed-size batches; the last is padded with all-zero rows (segment 0: unscored)."""
    batches = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        out = {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
        if len(chunk) < batch:
            out = {k: np.concatenate([v, np.zeros((batch - len(chunk),) + v.shape[1:], v.dtype)]) for k, v in out.items()}
        batches.append(out)
        if max_batches and len(batches) >= max_batches:
            break
    return batches


@dataclasses.dataclass
class Corpus:
    train: Sequence[np.ndarray]  # a list, or token_shards.ShardDocuments (read when asked)
    eval: list[np.ndarray]

    @property
    def train_tokens(self) -> int:
        total = getattr(self.train, "total_tokens", None)
        return total if total is not None else sum(len(d) for d in self.train)


def _shard_corpus(data_cfg, tokenizer, seed: int) -> Corpus:
    """train_files is a token shard dir: the same split and drops as for its text."""
    url = data_cfg.train_files.strip()
    if paths.is_remote(url):
        _say_once(f"copying the token shards {url} to this host (each host copies them whole and reads its "
                  f"1/N); to read only this host's records in place, mount the bucket (launch/tpu_pod.sh "
                  f"--gcsfuse=BUCKET:/mnt/DIR) and set --config.data.train_files=/mnt/DIR/...")
    path = str(paths.local_copy(url))  # a gs:// shard dir is read from a local copy
    manifest, lengths = token_shards.load_documents(path, tokenizer, data_cfg, _say_once)
    if data_cfg.eval_files:
        train_idx, evals = list(range(len(lengths))), _eval_documents(data_cfg, tokenizer)
    else:
        train_idx, eval_idx = split_eval(list(range(len(lengths))), data_cfg.eval_fraction, seed)
        held = token_shards.usable(path, manifest, lengths, eval_idx)
        evals = [held[i] for i in range(len(held))]
    train = token_shards.usable(path, manifest, lengths, train_idx)
    if not len(train):
        raise SolarError("the training data has no document of 2 or more tokens")
    return Corpus(train, evals)


def _say_once(text: str) -> None:
    """Prints on the first process only (every host runs the data pipeline)."""
    if jax.process_index() == 0:
        print(text, flush=True)


def _eval_documents(data_cfg, tokenizer) -> list[np.ndarray]:
    if token_shards.is_shard_dir(data_cfg.eval_files):
        held = token_shards.all_documents(str(paths.local_copy(data_cfg.eval_files.strip())), tokenizer, data_cfg,
                                           _say_once)
        return [held[i] for i in range(len(held))]
    eval_docs = read_documents(expand_files(data_cfg.eval_files), data_cfg.text_field)
    if not eval_docs:
        raise SolarError(f"the eval data is empty ({data_cfg.eval_files})")
    return tokenize_documents(eval_docs, tokenizer, data_cfg.add_bos, data_cfg.add_eos)


def load_corpus(data_cfg, tokenizer, seed: int) -> Corpus:
    """Documents -> tokens, with the eval split: from eval_files when given, else held out.
    train_files may be a token shard dir (solar_jax.tokenize)."""
    if data_cfg.train_files and token_shards.is_shard_dir(data_cfg.train_files):
        return _shard_corpus(data_cfg, tokenizer, seed)
    if data_cfg.train_files:
        train_docs = read_documents(expand_files(data_cfg.train_files), data_cfg.text_field)
    else:
        train_docs = builtin_documents(data_cfg.builtin)
    if not train_docs:
        raise SolarError(f"the training data is empty ({data_cfg.train_files or data_cfg.builtin})")
    if data_cfg.eval_files:
        evals = _eval_documents(data_cfg, tokenizer)
    else:
        train_docs, eval_docs = split_eval(train_docs, data_cfg.eval_fraction, seed)
        evals = tokenize_documents(eval_docs, tokenizer, data_cfg.add_bos, data_cfg.add_eos)
    train = tokenize_documents(train_docs, tokenizer, data_cfg.add_bos, data_cfg.add_eos)
    if not train:
        raise SolarError("the training data has no document of 2 or more tokens")
    return Corpus(train, evals)


def _shift(tokens: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": tokens[:-1], "targets": tokens[1:]}


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    # grain's defaults (16 threads, 500 elements) starve a 2-core machine.
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def train_dataset(docs: Sequence[np.ndarray], seq_len: int, batch_size: int, seed: int,
                  num_threads: int = 0, prefetch: int = 0) -> grain.IterDataset:
    """Infinite packed global batches, shuffled per epoch.

    Every process builds the same global batch and transfers only the rows its devices hold
    (sharding.put_global_batch): a run on N hosts sees exactly the batches of a run on one,
    so losses agree across topologies. Packing costs a few ms per step on the host."""
    # A shard dir's documents are read when the pipeline asks for them, not listed up front.
    ds = grain.MapDataset.source(docs if isinstance(docs, token_shards.ShardDocuments) else list(docs))
    ds = ds.shuffle(seed=seed).repeat(None).map(_shift)
    it = ds.to_iter_dataset(_read_options(num_threads, prefetch))
    packed = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={"inputs": seq_len, "targets": seq_len})
    return packed.batch(batch_size, drop_remainder=True)


class RowStreams:
    """Batches of the rows `rows` of the global batch when every row is its own stream
    (data.stream_per_row): row r packs the documents at positions r, r + B, r + 2B, ... of
    the seeded, shuffled, repeated order (B = batch_size). A process builds only the rows
    its devices hold, so it reads about 1/N of the documents on N hosts, and any number of
    hosts sees the batches of one. Iterates dicts of [len(rows), T] arrays; get_state /
    set_state for the checkpoint (per process, like grain's own iterators)."""

    def __init__(self, docs: Sequence[np.ndarray], seq_len: int, batch_size: int, rows: Sequence[int], seed: int,
                 num_threads: int = 0, prefetch: int = 0):
        source = docs if isinstance(docs, token_shards.ShardDocuments) else list(docs)
        order = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
        self.rows = list(rows)
        self._iters = []
        for r in self.rows:
            stream = order[r::batch_size].map(_shift).to_iter_dataset(_read_options(num_threads, prefetch))
            packed = grain.experimental.ConcatThenSplitIterDataset(
                stream, length_struct={"inputs": seq_len, "targets": seq_len})
            self._iters.append(iter(packed))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [next(it) for it in self._iters]
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict:
        return dict(rows=self.rows, streams=[it.get_state() for it in self._iters])

    def set_state(self, state: dict) -> None:
        if state.get("rows") != self.rows:
            raise SolarError(f"the checkpoint's data position is for rows {state.get('rows')} of the batch, this "
                             f"process holds rows {self.rows}: resume on the same mesh and number of processes")
        for it, st in zip(self._iters, state["streams"]):
            it.set_state(st)


def eval_batches(docs: Sequence[np.ndarray], seq_len: int, batch: int, max_batches: int) -> list[dict[str, np.ndarray]]:
    """The held-out set packed into fixed batches (the last padded with segment 0)."""
    ds = grain.MapDataset.source(list(docs)).map(_shift).to_iter_dataset(_read_options(0, 0))
    packed = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"inputs": seq_len, "targets": seq_len})
    return batch_rows(list(packed), batch, max_batches)


def model_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed fields -> what the train step takes (int32)."""
    return {
        "inputs": batch["inputs"].astype(np.int32),
        "targets": batch["targets"].astype(np.int32),
        "segment_ids": batch["inputs_segment_ids"].astype(np.int32),
        "loss_mask": (batch["targets_segment_ids"] > 0).astype(np.float32),
    }
