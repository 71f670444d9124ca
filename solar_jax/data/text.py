"""Documents from files: local .txt (paragraphs separated by blank lines), .jsonl (a text
field per line) and .parquet (a text column), or the built-in corpus (the Python docs in the
standard library's pydoc_data); tokenizing them; the seeded held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.weights import paths

BUILTIN = ("pydoc",)

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
