"""Pre-tokenized corpora: ArrayRecord shards of token ids, one record per document.

A pod run should not tokenize its corpus on every host at every start. `python -m
solar_jax.tokenize` does it once and writes OUT/:

  shard-00000-of-00004.array_record   one record per document: its token ids (uint16 when
                                      the vocab fits, else int32), the tokenizer's BOS/EOS
                                      included as configured; documents of fewer than 2
                                      tokens are kept (empty, so indices match the text)
  shard-00000-of-00004.lengths.npy    int32 [documents]: each record's token count
  manifest.json                       format, tokenizer fingerprint, add_bos/add_eos, dtype,
                                      per shard: documents, tokens, bytes, sha256 (and the
                                      lengths file's sha256)

Training reads a shard dir given as data.train_files (or eval_files) like text files: the
same seeded held-out split by document index, documents under 2 tokens dropped after the
split, the same shuffle and packing, so the batches are exactly those of tokenizing the
same text on the fly. Shards made by another tokenizer (fingerprint) or with other BOS/EOS
settings are refused in one line. Before training, each host checks every shard's size and
(data.verify_shards, on by default) its sha256 against the manifest: a damaged shard is one
line naming the file at start, not riegeli's "chunk data hash mismatch" hours in. A record
that still fails to read names its shard file (DataReadError).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from solar_jax.errors import SolarError
from solar_jax.weights import paths

FORMAT = "solar_jax.token_shards.v1"
MANIFEST = "manifest.json"

# Text the fingerprint tokenizes: words, code, digits, whitespace runs and non-ASCII, so
# that tokenizers with different merges, normalisation or special-token rules differ.
_PROBES = (
    "The quick brown fox jumps over the lazy dog. 1234567890 + 3.14159 = ?",
    "def f(x):\n    return x ** 2  # squares\n\n\tTabs,   spaces.",
    "Größe, naïve café, 東京, Привет, مرحبا, emoji \U0001F600.",
)


def fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: vocab size, BOS/EOS ids and the ids of _PROBES
    with and without special tokens."""
    probe = [tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id,
             [list(map(int, ids)) for ids in tokenizer.encode_batch(list(_PROBES), add_special_tokens=True)],
             [list(map(int, ids)) for ids in tokenizer.encode_batch(list(_PROBES), add_special_tokens=False)]]
    return hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:24]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


# ---- writing ------------------------------------------------------------------------------------

def write_shard(path_stem: Path, token_lists: Sequence[Sequence[int]], dtype: np.dtype) -> dict[str, Any]:
    """Writes path_stem.array_record and path_stem.lengths.npy; returns the manifest entry."""
    records = path_stem.with_name(path_stem.name + ".array_record")
    # group_size:1 keeps every record independently readable: random access for shuffling.
    writer = ArrayRecordWriter(str(records), "group_size:1")
    lengths = np.zeros(len(token_lists), np.int32)
    try:
        for i, ids in enumerate(token_lists):
            writer.write(np.asarray(ids, dtype).tobytes())
            lengths[i] = len(ids)
    finally:
        writer.close()
    lengths_file = path_stem.with_name(path_stem.name + ".lengths.npy")
    np.save(lengths_file, lengths)
    return dict(file=records.name, lengths=lengths_file.name, documents=len(token_lists),
                tokens=int(lengths.sum()), bytes=records.stat().st_size, sha256=sha256_of(records),
                lengths_sha256=sha256_of(lengths_file))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def finish(out: Path, entries: list[dict[str, Any]], tokenizer, add_bos: bool, add_eos: bool) -> dict[str, Any]:
    """Names the written parts shard-IIIII-of-NNNNN (in order) and writes the manifest."""
    if not entries or sum(e["documents"] for e in entries) == 0:
        raise SolarError("the text is empty: no document to tokenize")
    for i, e in enumerate(entries):
        stem = shard_name(i, len(entries))
        (out / e["file"]).rename(out / f"{stem}.array_record")
        (out / e["lengths"]).rename(out / f"{stem}.lengths.npy")
        e.update(file=f"{stem}.array_record", lengths=f"{stem}.lengths.npy")
    manifest = dict(format=FORMAT, tokenizer=dict(fingerprint=fingerprint(tokenizer), vocab_size=tokenizer.vocab_size,
                                                  bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id),
                    add_bos=add_bos, add_eos=add_eos, dtype=token_dtype(tokenizer.vocab_size).name,
                    documents=sum(e["documents"] for e in entries), tokens=sum(e["tokens"] for e in entries),
                    shards=entries)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---- reading ------------------------------------------------------------------------------------

def is_shard_dir(spec: str) -> bool:
    """True when data files name one directory (local or gs://) holding a manifest."""
    spec = spec.strip()
    if not spec or "," in spec:
        return False
    if paths.is_remote(spec):
        return paths.is_file(f"{spec.rstrip('/')}/{MANIFEST}")
    return (Path(spec) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    where = Path(path) / MANIFEST
    try:
        manifest = json.loads(where.read_text())
    except (OSError, ValueError) as e:
        raise SolarError(f"cannot read {where} ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SolarError(f"{where} is not a solar_jax token shard manifest (format {FORMAT})")
    for shard in manifest["shards"]:
        records = Path(path) / shard["file"]
        if not records.is_file() or records.stat().st_size != shard["bytes"]:
            raise SolarError(f"{records} is missing or not the size the manifest records ({shard['bytes']} bytes); "
                             "copy the shard dir again or re-run solar_jax.tokenize")
    return manifest


def verify_shards(path: str | os.PathLike, manifest: dict[str, Any]) -> float:
    """Checks each shard's (and lengths file's) sha256 against the manifest; a damaged one is
    one line naming the file. Returns the seconds it took."""
    start = time.perf_counter()
    for shard in manifest["shards"]:
        for name, key in ((shard["file"], "sha256"), (shard["lengths"], "lengths_sha256")):
            if key in shard and sha256_of(Path(path) / name) != shard[key]:
                raise SolarError(f"{Path(path) / name} is damaged: its sha256 is not the manifest's; copy the "
                                 "shard dir again or re-run solar_jax.tokenize")
    return time.perf_counter() - start


class DataReadError(SolarError):
    """A record of a token shard could not be read (damaged after the start's check, or the
    check was skipped); the message names the shard file."""


def check_tokenizer(manifest: dict[str, Any], tokenizer, add_bos: bool, add_eos: bool, where: str) -> None:
    if manifest["tokenizer"]["fingerprint"] != fingerprint(tokenizer):
        raise SolarError(f"{where} was tokenized with another tokenizer (vocab {manifest['tokenizer']['vocab_size']}, "
                         f"fingerprint {manifest['tokenizer']['fingerprint']}); re-run solar_jax.tokenize with "
                         "this run's tokenizer")
    if (manifest["add_bos"], manifest["add_eos"]) != (add_bos, add_eos):
        raise SolarError(f"{where} was tokenized with add_bos={manifest['add_bos']}, add_eos={manifest['add_eos']} "
                         f"but the run says add_bos={add_bos}, add_eos={add_eos}")


class ShardDocuments:
    """Documents `indices` of a shard dir as int32 arrays: a random-access source for grain
    (len, getitem), reading records only when asked."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], indices: np.ndarray, lengths: np.ndarray):
        self._path, self._dtype = Path(path), np.dtype(manifest["dtype"])
        self._files = [str(self._path / s["file"]) for s in manifest["shards"]]
        self._starts = np.cumsum([0] + [s["documents"] for s in manifest["shards"]])  # [shards + 1]
        self._source = None  # opened on first read (and again in each grain worker)
        self.indices = np.asarray(indices, np.int64)
        self.total_tokens = int(lengths[self.indices].sum())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        index = int(self.indices[i])
        try:
            if self._source is None:
                self._source = grain.sources.ArrayRecordDataSource(self._files)
            return np.frombuffer(self._source[index], self._dtype).astype(np.int32)
        except Exception as e:  # riegeli's errors name no file
            shard = int(np.searchsorted(self._starts, index, side="right")) - 1
            raise DataReadError(f"cannot read document {index} from {self._files[shard]} "
                                f"({' '.join(str(e).split())[:160]})") from None

    def __getstate__(self):
        return dict(self.__dict__, _source=None)

    def __repr__(self) -> str:
        return f"ShardDocuments({self._path}, {len(self)} documents)"


def load_documents(path: str, tokenizer, data_cfg, say=print) -> tuple[dict[str, Any], np.ndarray]:
    """(manifest, token counts [documents]) of a shard dir, checked against the run's tokenizer
    and, when data_cfg.verify_shards, against the manifest's sha256 of every file."""
    manifest = read_manifest(path)
    check_tokenizer(manifest, tokenizer, data_cfg.add_bos, data_cfg.add_eos, path)
    if data_cfg.verify_shards:
        seconds = verify_shards(path, manifest)
        size = sum(s["bytes"] for s in manifest["shards"])
        say(f"checked the sha256 of {len(manifest['shards'])} token shard(s) of {path} ({size / 1e9:.2f} GB) in "
            f"{seconds:.1f}s (--config.data.verify_shards=False skips it)")
    lengths = np.concatenate([np.load(Path(path) / s["lengths"]) for s in manifest["shards"]])
    if len(lengths) != manifest["documents"]:
        raise SolarError(f"{path}: the shards' lengths files hold {len(lengths)} documents, the manifest "
                         f"{manifest['documents']}")
    return manifest, lengths


def usable(path: str, manifest: dict[str, Any], lengths: np.ndarray, indices: Sequence[int]) -> ShardDocuments:
    """The documents `indices` of 2 or more tokens: what tokenizing on the fly keeps."""
    return ShardDocuments(path, manifest, [i for i in indices if lengths[i] >= 2], lengths)


def all_documents(path: str, tokenizer, data_cfg, say=print) -> ShardDocuments:
    """Every usable document (a shard dir given as eval_files)."""
    manifest, lengths = load_documents(path, tokenizer, data_cfg, say)
    return usable(path, manifest, lengths, range(len(lengths)))
