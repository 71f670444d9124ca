"""Atomic output directories: write into a temporary sibling, rename at the end.

The sibling is `.NAME.tmp-HOST-PID-XXXX`: a process killed mid-write (SIGKILL, a lost
machine) leaves it behind, and the next write to the same output removes those of this
host whose process is gone. The finished dir follows the umask like any file a user writes
(mkdtemp alone would leave it 0700).

A gs:// (any fsspec URL) output is written the same way into a local staging dir, then
uploaded on success: small files (config.json, manifests) last, so a reader that checks
for config.json never sees a dir without its tensors. An object store has no rename, so a
killed upload can leave a partial output; the next write then refuses it as non-empty
until --config.overwrite=True, which removes it first.

One writer per output: atomic_output_dir holds `.NAME.lock` beside the output (weights/
locks.py) while it writes, and check_output_dir refuses an output another live process is
writing, so two commands given one output_dir never replace each other's work.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from solar_jax.errors import SolarError
from solar_jax.weights import locks, paths


def check_output_dir(path: str | os.PathLike, overwrite: bool):
    """Refuses a non-empty dir unless `overwrite`; call it before any expensive work.
    Returns a Path (an etils.epath.Path for a remote URL, which keeps its `gs://`)."""
    if not str(path):
        raise SolarError("output_dir is empty")
    holder = locks.held_by_another(locks.sibling_lock(path))
    if holder is not None:
        raise locks.Busy(f"output_dir {path} is being written by {locks.describe(holder)}")
    if paths.is_remote(path):
        if paths.is_file(str(path)):
            raise SolarError(f"output_dir {path} exists and is not a directory")
        if paths.is_nonempty_dir(str(path)) and not overwrite:
            raise SolarError(f"output_dir {path} is not empty (pass --config.overwrite=True to replace it)")
        return output_path(path)
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SolarError(f"output_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SolarError(f"output_dir {out} is not empty (pass --config.overwrite=True to replace it)")
    return out


def writes_output_dir(run: Callable[..., Any]) -> Callable[..., Any]:
    """For a pipeline `run(c, ...)` that fills c.output_dir stage by stage: holds the output's
    lock for the whole run, so a second pipeline given the same output_dir is refused in one
    line instead of writing beside it."""
    @functools.wraps(run)
    def holding(c, *args, **kwargs):
        if not c.output_dir:
            return run(c, *args, **kwargs)  # run's own check names the missing key
        with locks.hold(locks.sibling_lock(c.output_dir), "output_dir", c.output_dir):
            return run(c, *args, **kwargs)

    return holding


def output_path(path: str | os.PathLike):
    """`path` as a Path, or an etils.epath.Path for a remote URL (pathlib would fold gs://)."""
    return paths.epath(path) if paths.is_remote(path) else Path(path)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def remove_stale_siblings(out: Path) -> list[Path]:
    """Removes `.OUT.tmp-HOST-PID-*` and `.OUT.old-HOST-PID` left by dead processes of this
    host (a live writer's, or another host's on a shared disk, are left alone)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-{re.escape(_host())}-(\d+)(-.*)?$")
    removed = []
    if not out.parent.is_dir():
        return removed
    for sibling in out.parent.iterdir():
        m = pattern.match(sibling.name)
        if m and int(m.group(2)) != os.getpid() and not locks.pid_alive(int(m.group(2))):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling dir; on success it replaces `path`, on error it is removed."""
    if paths.is_remote(path):
        with locks.hold(locks.sibling_lock(path), "output_dir", path), _remote_output_dir(str(path), overwrite) as tmp:
            yield tmp
        return
    out = check_output_dir(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locks.hold(locks.sibling_lock(out), "output_dir", out):
        with _local_output_dir(out, overwrite) as tmp:
            yield tmp


@contextlib.contextmanager
def _local_output_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    check_output_dir(out, overwrite)  # again, under the lock: another writer may have finished since
    remove_stale_siblings(out)
    tag = f"{_host()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{tag}-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tag}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _staging_dir() -> Path:
    """A fresh local dir in the cache where an output bound for gs:// is written first."""
    staging = paths.cache_root() / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{_host()}-{os.getpid()}-", dir=staging))


@contextlib.contextmanager
def _remote_output_dir(url: str, overwrite: bool) -> Iterator[Path]:
    """A local staging dir uploaded to `url` on success (the old contents removed first)."""
    check_output_dir(url, overwrite)
    tmp = _staging_dir()
    try:
        yield tmp
        paths.upload_dir(tmp, url, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staged_output_dir(url: str, overwrite: bool) -> Path:
    """For a pipeline whose stages read each other's files as they go (recipe, reproduce,
    merge_gain): a fresh local dir to write into, published to the gs:// `url` by
    publish_output_dir when the run ends. A run that fails leaves it in the cache."""
    check_output_dir(url, overwrite)
    tmp = _staging_dir()
    print(f"writing {url} in {tmp} first; it is uploaded when the run ends", flush=True)
    return tmp


# Files whose text names the output dir (reports, results, logs): the local staging path in
# them becomes the URL.
_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".log")


def publish_output_dir(local: Path, url: str) -> None:
    """Uploads a staged_output_dir to `url` (links to local inputs, such as the recipe's
    base/, are left out) and removes it; a local output dir stays as it is."""
    if not paths.is_remote(url):
        return
    for f in local.rglob("*"):
        if f.suffix in _TEXT_SUFFIXES and f.is_file() and not f.is_symlink():
            text = f.read_text(errors="replace")
            if str(local) in text:
                f.write_text(text.replace(str(local), url.rstrip("/")))
    paths.upload_dir(local, url, replace=True, follow_links=False)
    shutil.rmtree(local, ignore_errors=True)
