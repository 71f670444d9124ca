"""Paths: local and gs:// (any fsspec URL) alike, through etils.epath.

Why epath: orbax already writes checkpoints through it (and tensorstore), so one library
reaches every store the project touches; for gs:// it uses gcsfs (fsspec), which honours
STORAGE_EMULATOR_HOST, so the same code runs against a local GCS emulator in the tests.

Most readers and writers underneath need real files: safetensors memory-maps, tokenizers
and transformers read a directory, tensorboardX and metrics.jsonl append, and an object
store has no append or rename. So remote paths are staged at the edges:
  inputs   (model_dir, data files and globs)  -> downloaded once into a local cache
           (SOLAR_JAX_CACHE, default ~/.cache/solar_jax/remote), refreshed when the
           remote listing (names, sizes) changes
  outputs  (a run's workdir, an output_dir)    -> written in a local mirror and pushed
           (a train run pushes at every checkpoint and at the end, so what is on gs:// is
           consistent with the checkpoint it resumes from; checkpoints themselves go to
           gs:// directly through orbax)
Missing objects, bad URLs and permission errors are one SolarError line.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from solar_jax.errors import SolarError


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _configure_emulator() -> None:
    # gcsfs 2026.10 first probes each bucket over gRPC (hierarchical namespaces): against a
    # local emulator that is a 60 s timeout per bucket. Off when an emulator is named.
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def epath(path: str | os.PathLike):
    """An etils.epath.Path (pathlib's API on local paths and object stores)."""
    from etils import epath as epath_lib

    _configure_emulator()
    return epath_lib.Path(str(path))


@contextlib.contextmanager
def remote_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turns a store's errors into one line naming the path."""
    try:
        yield
    except SolarError:
        raise
    except FileNotFoundError:
        raise SolarError(f"{path} does not exist") from None
    except PermissionError as e:
        raise SolarError(f"{path}: permission denied ({_short(e)})") from None
    except (OSError, ValueError, ImportError) as e:
        raise SolarError(f"{path}: {type(e).__name__}: {_short(e)}") from None
    except Exception as e:  # google.auth / gcsfs HTTP errors are not OSErrors
        if type(e).__module__.split(".")[0] in ("google", "gcsfs", "aiohttp", "fsspec"):
            raise SolarError(f"{path}: {type(e).__name__}: {_short(e)}") from None
        raise


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def glob(pattern: str) -> list[str]:
    """Sorted matches of a local or remote pattern (remote ones as full URLs)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    root = f"{scheme}://" + "/".join(parts[:fixed])
    with remote_errors(pattern):
        return sorted(str(p) for p in epath(root).glob("/".join(parts[fixed:])))


def is_file(path: str) -> bool:
    if not is_remote(path):
        return Path(path).is_file()
    with remote_errors(path):
        return epath(path).is_file()


def exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    with remote_errors(path):
        return epath(path).exists()


def cache_root() -> Path:
    return Path(os.environ.get("SOLAR_JAX_CACHE") or Path.home() / ".cache" / "solar_jax" / "remote")


def _listing(url: str) -> list[tuple[str, int]]:
    """(relative name, size) of every file under a remote dir (or of the file itself), by
    one recursive listing (fsspec's find: epath refuses ** on object stores)."""
    import fsspec

    _configure_emulator()
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    if fs.isfile(root):
        return [("", int(fs.size(root)))]
    found = fs.find(root, detail=True)
    return sorted((name[len(root):].lstrip("/"), int(info.get("size") or 0)) for name, info in found.items()
                  if info.get("type") == "file")


def local_copy(url: str) -> Path:
    """A local copy of a remote file or dir (the path itself if local): downloaded into the
    cache once, again only when the remote listing changes."""
    if not is_remote(url):
        return Path(url)
    with remote_errors(url):
        listing = _listing(url)
        if not listing:
            raise FileNotFoundError(url)
        key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
        target = cache_root() / key / (url.rstrip("/").rsplit("/", 1)[-1] or "root")
        stamp = target.parent / "listing.json"
        if target.exists() and stamp.exists() and json.loads(stamp.read_text()) == [list(x) for x in listing]:
            return target
        tmp = target.parent / (target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        root = epath(url)
        for name, _ in listing:
            dest = tmp / name if name else tmp
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((root / name if name else root).read_bytes())
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp, target)
        stamp.write_text(json.dumps(listing))
        return target


def mirror_dir(url: str) -> Path:
    """The local dir where an output for a remote URL is written before it is pushed."""
    key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / "outputs" / key


class Mirror:
    """A local dir that mirrors a remote dir: pull() fills it with what was pushed last,
    push() sends the files that changed since (top-level names in skip stay out: a run's
    checkpoints/, which orbax writes to the remote dir itself)."""

    def __init__(self, url: str, skip: tuple[str, ...] = ()):
        self.url, self.skip = url.rstrip("/"), skip
        self.local = mirror_dir(url)
        self._sent: dict[str, str] = {}  # relative name -> sha1 of what was pushed

    def _names(self):
        for path in sorted(self.local.rglob("*")):
            rel = path.relative_to(self.local).as_posix()
            if path.is_file() and rel.split("/", 1)[0] not in self.skip:
                yield rel, path

    def pull(self) -> Path:
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        with remote_errors(self.url):
            root = epath(self.url)
            if root.exists():
                for name, _ in _listing(self.url):
                    if name.split("/", 1)[0] not in self.skip:
                        dest = self.local / name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes((root / name).read_bytes())
        self._sent = {rel: hashlib.sha1(path.read_bytes()).hexdigest() for rel, path in self._names()}
        return self.local

    def push(self) -> None:
        with remote_errors(self.url):
            root = epath(self.url)
            root.mkdir(parents=True, exist_ok=True)
            for rel, path in self._names():
                data = path.read_bytes()
                digest = hashlib.sha1(data).hexdigest()
                if self._sent.get(rel) != digest:
                    dest = root / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
                    self._sent[rel] = digest


def upload_dir(local: Path, url: str, replace: bool = False, follow_links: bool = True) -> None:
    """Uploads a local dir's files to `url` (its old contents removed first if `replace`),
    largest first: the small files readers look for (config.json, manifests) arrive last.
    follow_links=False leaves out symlinks and whatever lies under a linked dir."""
    def under_link(p: Path) -> bool:
        rel = p.relative_to(local)
        return any((local / q).is_symlink() for q in (rel, *rel.parents) if q != Path("."))

    files = sorted((p for p in local.rglob("*") if p.is_file() and (follow_links or not under_link(p))),
                   key=lambda p: (-p.stat().st_size, str(p)))
    with remote_errors(url):
        if replace:
            remove_tree(url)
        root = epath(url)
        root.mkdir(parents=True, exist_ok=True)
        for path in files:
            dest = root / path.relative_to(local).as_posix()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())


def is_nonempty_dir(url: str) -> bool:
    with remote_errors(url):
        root = epath(url)
        return root.exists() and root.is_dir() and any(True for _ in root.iterdir())


def remove_tree(url: str) -> None:
    with remote_errors(url):
        root = epath(url)
        if root.exists():
            root.rmtree()
