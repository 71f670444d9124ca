"""Atomic output directories: write into a temporary sibling, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from solar_jax.errors import SolarError


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuses a non-empty dir unless `overwrite`; call it before any expensive work."""
    out = Path(path)
    if not str(path):
        raise SolarError("output_dir is empty")
    if out.exists() and not out.is_dir():
        raise SolarError(f"output_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SolarError(f"output_dir {out} is not empty (pass --config.overwrite=True to replace it)")
    return out


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling dir; on success it replaces `path`, on error it is removed."""
    out = check_output_dir(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
