"""Text data for continued pretraining: files -> documents -> tokens -> packed grain batches.

Documents come from local .txt (paragraphs separated by blank lines), .jsonl (a text
field per line) and .parquet (a text column) files, or from the built-in corpus (the Python
docs in the standard library's pydoc_data). They are tokenized once, held out for eval by
a seeded split, sharded by process, shuffled per epoch, and packed with grain's
concat-then-split into rows of seq_len tokens with segment ids, so attention never crosses
documents. `inputs` and `targets` (shifted by one) are packed together, so every row has
complete targets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Sequence

import grain
import jax
import numpy as np

from solar_jax.errors import SolarError
from solar_jax.training import token_shards
from solar_jax.weights import paths

BUILTIN = ("pydoc",)


# ---- tokenizers -------------------------------------------------------------------------------

class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256, EOS = 0, no BOS): tests and tiny models."""

    vocab_size = 256
    bos_id = None
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode("utf-8") if b != 0]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A local Hugging Face tokenizer (tokenizer.json or sentencepiece tokenizer.model)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise SolarError(f"cannot load a tokenizer from {path} ({type(e).__name__})") from None
        self.vocab_size = len(self._tok)
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        if self.eos_id is None:
            raise SolarError(f"tokenizer in {path} has no EOS token")

    @property
    def hf(self):
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        # add_special_tokens follows the tokenizer's convention: Llama/Mistral prepend <s>,
        # SmolLM2 adds nothing.
        return self._tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


class SentencePieceTokenizer:
    """A sentencepiece model file (tokenizer.model); BOS/EOS from the model's own ids."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise SolarError(f"cannot load sentencepiece model {path} ({type(e).__name__})") from None
        self.vocab_size = self._sp.GetPieceSize()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        if self.eos_id is None:
            raise SolarError(f"sentencepiece model {path} has no EOS id")

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        ids = self._sp.EncodeAsIds(list(texts))
        if add_special_tokens and self.bos_id is not None:
            ids = [[self.bos_id] + x for x in ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds(list(ids))


def load_tokenizer(spec: str, model_dir: str | None = None):
    """'bytes', a sentencepiece .model file, a directory with tokenizer files, or '' for the
    model's own directory."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec.endswith(".model"):
        if not Path(spec).is_file():
            raise SolarError(f"sentencepiece model {spec} does not exist")
        return SentencePieceTokenizer(spec)
    path = spec or model_dir
    if not path:
        raise SolarError("no tokenizer: set tokenizer (a directory, or 'bytes') or model_dir")
    if not Path(path).is_dir():
        raise SolarError(f"tokenizer directory {path} does not exist")
    return HFTokenizer(path)


# ---- documents --------------------------------------------------------------------------------

def builtin_documents(name: str, max_chars: int = 4000) -> list[str]:
    """The Python docs' topics, split at paragraph boundaries into pieces of <= max_chars."""
    if name != "pydoc":
        raise SolarError(f"unknown built-in corpus {name!r}; known: {', '.join(BUILTIN)}")
    import pydoc_data.topics

    docs = []
    for key in sorted(pydoc_data.topics.topics):
        piece = ""
        for para in pydoc_data.topics.topics[key].split("\n\n"):
            if piece and len(piece) + len(para) > max_chars:
                docs.append(piece)
                piece = ""
            piece = f"{piece}\n\n{para}" if piece else para
        if piece.strip():
            docs.append(piece)
    return docs


def expand_files(spec: str) -> list[Path]:
    """Comma-separated paths or globs, local or remote (gs://...) -> local files (remote
    ones copied into the cache once, weights/paths.py); a pattern that matches nothing is
    an error."""
    files: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        matches = paths.glob(part) if any(c in part for c in "*?[") else [part]
        if not matches or not all(paths.is_file(m) for m in matches):
            raise SolarError(f"data file {part} does not exist")
        files += [paths.local_copy(m) for m in matches]
    return files


def read_text(path: Path) -> str:
    """A UTF-8 text file; bytes that are not UTF-8 name the file and the offset."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SolarError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_parquet(path: Path, columns: list[str] | None = None):
    """A pyarrow Table of the file's columns; a file that is not parquet names itself."""
    # Imported here: pyarrow.parquet takes 0.55 s to import (measured, 2 cores) and only
    # parquet inputs need it; every command that imports this module would pay it.
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path, columns=columns)
    except (pyarrow.ArrowException, OSError) as e:
        raise SolarError(f"{path}: not a readable parquet file ({' '.join(str(e).split())[:200]})") from None


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(file:line, row) for each non-blank line; bad JSON or a non-object names the line."""
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SolarError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise SolarError(f"{path}:{n}: a row must be a JSON object")
        yield f"{path}:{n}", row


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


def read_documents(files: Sequence[Path], text_field: str = "text") -> list[str]:
    docs: list[str] = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix in (".txt", ".md"):
            docs += [p for p in read_text(path).split("\n\n") if p.strip()]
        elif suffix in (".jsonl", ".json"):
            for where, row in jsonl_rows(path):
                if not isinstance(row.get(text_field), str):
                    raise SolarError(f"{where}: no string field {text_field!r}")
                docs.append(row[text_field])
        elif suffix == ".parquet":
            table = read_parquet(path, [text_field])
            docs += [t for t in table.column(text_field).to_pylist() if isinstance(t, str)]
        else:
            raise SolarError(f"{path}: unsupported file type {suffix!r} (use .txt, .jsonl or .parquet)")
    return [d for d in docs if d.strip()]


def tokenize_documents(docs: Sequence[str], tokenizer, add_bos: bool = True, add_eos: bool = True,
                       min_tokens: int = 2) -> list[np.ndarray]:
    """Each document -> int32 tokens (the tokenizer's BOS if it adds one) + text + [EOS];
    documents under min_tokens are dropped (token shards keep them all: min_tokens=0)."""
    out = []
    for start in range(0, len(docs), 256):
        for ids in tokenizer.encode_batch(docs[start:start + 256], add_special_tokens=add_bos):
            if add_eos and tokenizer.eos_id is not None:
                ids = ids + [tokenizer.eos_id]
            if len(ids) >= min_tokens:
                out.append(np.asarray(ids, np.int32))
    return out


def split_eval(docs: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded held-out split of documents: (train, eval); eval gets at least one document."""
    if len(docs) < 2:
        raise SolarError(f"need at least 2 documents to hold some out for eval, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_eval = max(1, int(round(fraction * len(docs))))
    held = set(order[:n_eval].tolist())
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


# ---- pipelines --------------------------------------------------------------------------------

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
