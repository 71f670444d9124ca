"""One writer per directory: a lock that a crashed or SIGKILLed holder does not leave stuck.

A run's workdir and a command's output dir are written by one process at a time; a second
one (a double launch, a pod relaunch while old workers still live) is refused in one line
naming the holder (host, pid, since when, its command).

Local paths: `fcntl.flock` on a lock file. The kernel drops the lock when the holder's
process ends however it ends, so a SIGKILLed holder never blocks the next run; the file
holds the owner record only so that the refusal can name the holder. (flock is per open
file: two holders in one process exclude each other too, which the tests use.)

Remote URLs (gs://, any fsspec store): no file locks exist there. The lock is an object
created only if absent (GCS's ifGenerationMatch=0) holding the owner record, rewritten by
a heartbeat thread every HEARTBEAT_S. A record whose heartbeat is older than STALE_S, or
whose holder is a dead process on this very host, is taken over (said on stdout).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from solar_jax.errors import SolarError
from solar_jax.weights import paths

HEARTBEAT_S = 30.0
STALE_S = 300.0  # 10 missed heartbeats: a preempted VM's clock and network have long come back
WORKDIR_LOCK = ".solar_jax.lock"  # inside a run's workdir (the workdir stays where it is)


_held: set[str] = set()  # this process's locks (held_by_another does not count them)


class Busy(SolarError):
    """Another live process holds the lock."""


def sibling_lock(path: str | os.PathLike) -> str:
    """The lock of an output dir that is replaced by a rename: `.NAME.lock` beside it."""
    text = str(path).rstrip("/")
    head, _, name = text.rpartition("/")
    return f"{head}/.{name}.lock" if head else f".{name}.lock"


def _record(token: str) -> dict[str, Any]:
    now = time.time()
    return dict(host=socket.gethostname(), pid=os.getpid(), since=now, heartbeat=now, token=token,
                command=" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300])


def describe(holder: dict[str, Any] | None) -> str:
    """'pid 123 on host h since 2026-12-05 23:50:01 UTC (train --config=...)'."""
    if not holder:
        return "another process (its owner record is not written yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("since", 0))))
    text = f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def _busy(what: str, target: str, holder: dict[str, Any] | None) -> Busy:
    return Busy(f"{what} {target} is in use by {describe(holder)}; wait for that run to end or stop it "
                f"(a run that died leaves no lock behind)")


def _read_record(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.decode() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


# ---- local: flock ----------------------------------------------------------------------


def _open_locked(lock_file: Path) -> int | None:
    """An fd holding an exclusive flock on lock_file, or None if a live process holds it.

    The lock file is removed on release; a process that opened the old file before the
    removal may lock the unlinked inode, so a lock counts only if the path still names the
    inode that was locked (else: try again on the new file)."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_local(lock_file: Path) -> dict[str, Any] | None:
    try:
        return _read_record(lock_file.read_bytes())
    except OSError:
        return None


@contextlib.contextmanager
def _hold_local(lock_file: Path, what: str, target: str) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _open_locked(lock_file)
    except PermissionError as e:
        raise SolarError(f"{what} {target}: cannot write its lock file {lock_file} ({e.strerror})") from None
    if fd is None:
        raise _busy(what, target, _read_local(lock_file))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_record(uuid.uuid4().hex)).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_file.unlink()  # still locked: a waiting opener sees the inode change and retries
        os.close(fd)


def held_by_another(lock_file: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record if a live process holds this lock (a check before expensive work;
    the lock itself is taken where the writing starts), else None. Local paths only."""
    path = Path(lock_file)
    if paths.is_remote(lock_file) or not path.exists() or str(path.absolute()) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_local(path) or {}
    finally:
        os.close(fd)
    return None


# ---- remote: create-if-absent object + heartbeat ---------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host lives (another user's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive_here(holder: dict[str, Any]) -> bool:
    """False only when the holder is a process of this host that is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        return pid_alive(int(holder.get("pid", -1)))
    except (ValueError, OverflowError):
        return True


class _RemoteLock:
    def __init__(self, url: str):
        import fsspec

        self.url = url
        self.fs, self.key = fsspec.core.url_to_fs(url)
        self.token = uuid.uuid4().hex
        self.record = _record(self.token)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, Any] | None:
        try:
            return _read_record(self.fs.cat_file(self.key))
        except FileNotFoundError:
            return None

    def acquire(self, what: str, target: str) -> None:
        for _ in range(3):
            try:
                self.fs.pipe_file(self.key, json.dumps(self.record).encode(), mode="create")
                break
            except FileExistsError:
                holder = self.current()
                if holder is None:
                    continue  # released between the two calls
                age = time.time() - float(holder.get("heartbeat", 0))
                if age < STALE_S and _alive_here(holder):
                    raise _busy(what, target, holder) from None
                print(f"{what} {target}: taking over the lock of {describe(holder)} "
                      f"(heartbeat {age:.0f}s old{'' if _alive_here(holder) else ', process gone'})", flush=True)
                self.fs.rm_file(self.key)
        else:
            raise _busy(what, target, self.current())
        self._thread = threading.Thread(target=self._beat, name="solar_jax-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; STALE_S allows ten
                if (self.current() or {}).get("token") == self.token:
                    self.record["heartbeat"] = time.time()
                    self.fs.pipe_file(self.key, json.dumps(self.record).encode())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            if (self.current() or {}).get("token") == self.token:
                self.fs.rm_file(self.key)


@contextlib.contextmanager
def _hold_remote(url: str, what: str, target: str) -> Iterator[None]:
    with paths.remote_errors(url):
        lock = _RemoteLock(url)
        lock.acquire(what, target)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def hold(lock_file: str | os.PathLike, what: str, target: str | os.PathLike) -> Iterator[None]:
    """Holds `lock_file` (a local path or a URL) while the block runs; refuses with Busy
    (one line naming the holder) if a live process holds it. `what target` names the
    guarded thing in messages ("workdir /runs/a"). Re-entrant within a process: a pipeline
    holding its output dir may write it through atomic_output_dir, which holds it too."""
    key = str(lock_file) if paths.is_remote(lock_file) else str(Path(lock_file).absolute())
    if key in _held:
        yield
        return
    hold_one = _hold_remote(key, what, str(target)) if paths.is_remote(key) else _hold_local(Path(key), what,
                                                                                             str(target))
    with hold_one:
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
