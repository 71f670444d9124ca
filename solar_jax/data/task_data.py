"""The data of each training task, behind one interface the train loop uses.

cpt: documents packed with concat-then-split (data.py). sft: instruction rows, prompt
masked, packed first-fit or padded (sft_data.py). dpo: {prompt, chosen, rejected} pairs,
padded, optionally carrying reference log-probs computed once with the initial model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import sft_data
from solar_jax.errors import SolarError

TASKS = ("cpt", "sft", "dpo")


@dataclasses.dataclass
class TaskData:
    train: Any  # global batches (the same on every process), or with `rows` only those rows
    rows: list[int] | None = dataclasses.field(default=None, kw_only=True)  # the rows of the global batch train gives
    eval: list[dict[str, np.ndarray]]  # global batches
    to_model: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # host batch -> step inputs
    fields: dict[str, tuple[tuple[int, ...], Any]]  # step input name -> (global shape, dtype)
    description: str
    rows_per_example: int = 1  # 2 for DPO (chosen + rejected)


def _token_fields(prefixes, batch: int, seq_len: int) -> dict:
    fields = {}
    for p in prefixes:
        for name, dtype in (("inputs", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
                            ("loss_mask", jnp.float32)):
            fields[f"{p}{name}"] = ((batch, seq_len), dtype)
    return fields


def batch_fields(c) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The train step's inputs for run config c: name -> (global shape, dtype). What the
    step is compiled for, known before any data is read (plan --compile needs no data)."""
    if c.task in ("cpt", "sft"):
        return _token_fields([""], c.batch_size, c.seq_len)
    if c.task != "dpo":
        raise SolarError(f"unknown task {c.task!r}; known: {', '.join(TASKS)}")
    fields = _token_fields(["chosen_", "rejected_"], c.batch_size, c.seq_len)
    if c.dpo.reference == "precomputed":
        fields.update(ref_chosen_logps=((c.batch_size,), jnp.float32), ref_rejected_logps=((c.batch_size,), jnp.float32))
    return fields


def build(c, tokenizer, reference: Callable[[list[dict]], np.ndarray] | None = None,
          cache_dir: Path | None = None, local_rows: list[int] | None = None) -> TaskData:
    """reference(examples) -> [N, 2] reference log-probs (DPO with precomputed references).
    local_rows: the rows of the global batch this process holds (used by cpt with
    data.stream_per_row; default all)."""
    if c.task == "cpt":
        corpus = pretrain_lib.load_corpus(c.data, tokenizer, c.seed)
        if c.data.stream_per_row:
            rows = list(range(c.batch_size)) if local_rows is None else list(local_rows)
            train = pretrain_lib.RowStreams(corpus.train, c.seq_len, c.batch_size, rows, c.seed, c.data.num_threads,
                                        c.data.prefetch)
        else:
            rows, train = None, pretrain_lib.train_dataset(corpus.train, c.seq_len, c.batch_size, c.seed,
                                                       c.data.num_threads, c.data.prefetch)
        return TaskData(
            rows=rows,
            train=train,
            eval=pretrain_lib.eval_batches(corpus.eval, c.seq_len, c.batch_size, c.eval_batches),
            to_model=pretrain_lib.model_batch,
            fields=batch_fields(c),
            description=f"{len(corpus.train)} training documents ({corpus.train_tokens:,} tokens), "
                        f"{len(corpus.eval)} held out; batch {c.batch_size} x {c.seq_len} tokens")
    train_rows, eval_rows = sft_data.load_split_rows(c.data.train_files, c.data.eval_files, c.data.eval_fraction,
                                                     c.seed, c.data.builtin, c.task, c.data.num_builtin)
    if c.task == "sft":
        train, counts = sft_data.sft_examples(train_rows, c.template, tokenizer, c.seq_len)
        held, _ = sft_data.sft_examples(eval_rows, c.template, tokenizer, c.seq_len)
        if not train:
            raise SolarError(f"no usable training example: {counts.report('sft data')}")
        return TaskData(
            train=sft_data.train_dataset(train, c.seq_len, c.batch_size, c.seed, c.packing, c.data.num_threads,
                                         c.data.prefetch),
            eval=sft_data.eval_batches(held, c.seq_len, c.batch_size, c.eval_batches),
            to_model=sft_data.to_model,
            fields=batch_fields(c),
            description=f"{counts.report('sft data')}; {len(held)} held out; template {c.template}, "
                        f"{'packed' if c.packing else 'padded'} batches of {c.batch_size} x {c.seq_len}")
    if c.task != "dpo":
        raise SolarError(f"unknown task {c.task!r}; known: {', '.join(TASKS)}")
    train, counts = sft_data.dpo_examples(train_rows, c.template, tokenizer, c.seq_len)
    held, _ = sft_data.dpo_examples(eval_rows, c.template, tokenizer, c.seq_len)
    if not train:
        raise SolarError(f"no usable training pair: {counts.report('dpo data')}")
    if c.dpo.reference == "precomputed":
        for name, examples in (("train", train), ("eval", held)):
            logps = _cached_reference(cache_dir, name, examples, reference)
            for ex, (rc, rr) in zip(examples, logps):
                ex["ref_chosen_logps"], ex["ref_rejected_logps"] = np.float32(rc), np.float32(rr)
    return TaskData(
        train=sft_data.train_dataset(train, c.seq_len, c.batch_size, c.seed, False, c.data.num_threads, c.data.prefetch),
        eval=sft_data.eval_batches(held, c.seq_len, c.batch_size, c.eval_batches),
        to_model=sft_data.to_model,
        fields=batch_fields(c),
        description=f"{counts.report('dpo data')}; {len(held)} held-out pairs; template {c.template}; "
                    f"reference {c.dpo.reference}; batches of {c.batch_size} pairs x {c.seq_len}",
        rows_per_example=2)


def _cached_reference(cache_dir: Path | None, name: str, examples: list[dict], reference) -> np.ndarray:
    """Reference log-probs [N, 2], computed once per run dir and reused on resume."""
    path = cache_dir / f"dpo_reference_{name}.npy" if cache_dir else None
    if path is not None and path.exists():
        try:
            cached = np.load(path, allow_pickle=False)  # never unpickle what sits in a run dir
        except (ValueError, OSError, EOFError) as e:
            print(f"warning: {path} is not a reference cache this run wrote ({' '.join(str(e).split())[:120]}); "
                  "computing it again", flush=True)
            cached = None
        if cached is not None and cached.shape == (len(examples), 2) and cached.dtype == np.float32:
            return cached
    if reference is None:
        raise SolarError("precomputed DPO references need the reference model")
    logps = np.asarray(reference(examples), np.float32).reshape(len(examples), 2)
    if path is not None:
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, logps)
        tmp.replace(path)  # atomic: a kill mid-write leaves no torn cache
    return logps
