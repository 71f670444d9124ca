"""Checkpoints with orbax: train state, grain iterator state and run metadata, per step.

Saves are asynchronous and keep the last k. The grain iterator's state is captured when
`save` is called (a frozen snapshot), so the background write cannot record a later
position. A restart restores the newest readable step; an unreadable one (a machine died
mid-write, a corrupted file) is reported and the previous one is used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from solar_jax.errors import RunFailed, SolarError


# The OS's words for the failed writes users meet; found anywhere in orbax's/tensorstore's
# message (its wording and nesting vary between versions and between the first failing
# write and the one reported at wait).
_OS_WRITE_FAILURES = tuple(os.strerror(n) for n in (
    errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO))


def _chain_text(e: BaseException) -> str:
    """The messages of an exception and its causes/contexts, whitespace collapsed."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " ".join(" ".join(parts).split())


def _write_failure_reason(text: str) -> str:
    """The OS's reason for a failed write ("File too large", "No space left on device"), or,
    failing that, the message with quoted paths elided (they are long and the directory is
    already named), cut to 200 characters."""
    for words in _OS_WRITE_FAILURES:
        if words in text:
            return words
    if reason := re.search(r"([A-Za-z][A-Za-z ]+?) \[os_error_code", text):
        return reason.group(1)
    return re.sub(r'"[^"]*/[^"]*"', '"..."', text)[:200]


class _FrozenIteratorState:
    """What grain's checkpoint handler needs from an iterator: get_state() as JSON bytes."""

    def __init__(self, state: dict[str, Any]):
        self._json = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._json


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True, compression: bool = False):
        # gs:// (and other remote) paths go to orbax/tensorstore as they are; pathlib would
        # fold the double slash.
        self.directory = epath.Path(directory) if "://" in str(directory) else Path(directory).absolute()
        # cleanup_tmp_directories: a save cut short (SIGKILL, a full disk) leaves a tmp step
        # dir; the next start removes it instead of keeping it forever.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        # The train state through orbax's pytree handler, whose zstd compression is a choice
        # (StandardSave always compresses; the trade-off: run_config.checkpoint_compression).
        # Either format restores with either setting, and so do checkpoints StandardSave wrote.
        handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=compression)}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"),
                                             item_handlers=handlers)
        self._failed = False

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict[str, Any], force: bool = False) -> bool:
        items = dict(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
        self._check_free_space(step, state)
        with self._write_failures(step):
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuses a save the local disk cannot hold, before orbax starts writing (a write
        that runs out of space fails in many background threads at once). Remote paths
        (gs://) are not checked."""
        if "://" in str(self.directory):
            return
        needed = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) // jax.process_count()
        check_free_space(Path(self.directory), needed, f"the checkpoint of step {step}", self._finished_steps())

    @contextlib.contextmanager
    def _write_failures(self, step: int):
        """A write that fails (a full disk, no permission; async writes fail at the next
        save or at wait) becomes one RunFailed line naming the step and the last good
        checkpoint; the half-written step dir is removed."""
        try:
            yield
        except Exception as e:  # orbax/tensorstore raise many types for a failed write
            self._failed = True
            text = _chain_text(e)
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
            self._remove_tmp_steps()
            good = self._finished_steps()
            raise RunFailed(
                f"could not write the checkpoint of step {failed.group(1) if failed else step} to {self.directory}: "
                f"{_write_failure_reason(text)}; the last good checkpoint is "
                f"{f'step {good[-1]}' if good else 'none'}") from e

    def _finished_steps(self) -> list[int]:
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def _remove_tmp_steps(self) -> None:
        if jax.process_index() != 0:
            return
        for p in self.directory.iterdir():
            if ".orbax-checkpoint-tmp" not in p.name:
                continue
            if "://" in str(p):  # gs:// and other remote paths (epath)
                p.rmtree()
            else:
                shutil.rmtree(p, ignore_errors=True)

    def restore(self, abstract_state: Any, data_iterator: Any | None = None,
                step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """Restores `step` (default: the newest readable one) into the abstract state's
        shapes and shardings; sets the data iterator's position. Returns (step, state, meta)."""
        steps = [step] if step is not None else self.all_steps()[::-1]
        if not steps:
            raise SolarError(f"no checkpoint in {self.directory}")
        errors = []
        for s in steps:
            items = dict(state=ocp.args.PyTreeRestore(
                abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
                meta=ocp.args.JsonRestore())
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(**items))
            except Exception as e:  # orbax/tensorstore raise many types for a damaged step
                reason = " ".join(str(e).split())[:200]
                print(f"warning: checkpoint at step {s} in {self.directory} is unreadable ({type(e).__name__}: "
                      f"{reason}); falling back to the previous one", flush=True)
                errors.append(s)
                continue
            if errors:
                self._set_aside(errors)
                print(f"resumed from step {s} instead of step {errors[0]}", flush=True)
            return s, restored["state"], dict(restored["meta"] or {})
        raise SolarError(f"no readable checkpoint in {self.directory} (tried steps {', '.join(map(str, errors))})")

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable steps out of the way (kept for inspection) so they can be re-saved."""
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                if src.exists():
                    src.rename(self.directory / f"unreadable-step-{s}-{int(time.time())}")
        self.manager.reload()

    def wait(self) -> None:
        with self._write_failures(self.latest_step() or 0):
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the last write and closes; after a failed write it only closes (the
        failure is already on its way up)."""
        if self._failed:
            with contextlib.suppress(Exception):
                self.manager.close()
            return
        with self._write_failures(self.latest_step() or 0):
            self.manager.wait_until_finished()
        self.manager.close()


def check_free_space(directory: Path, needed: int, what: str, good_steps: list[int]) -> None:
    """RunFailed when the file system of `directory` has less than `needed` bytes (+5%) free."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed * 1.05 > free:
        raise RunFailed(f"not enough free disk for {what} in {directory}: it needs ~{needed / 2**30:.2f} GiB, "
                        f"{free / 2**30:.2f} GiB are free; the last good checkpoint is "
                        f"{f'step {good_steps[-1]}' if good_steps else 'none'}")


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the target a restore fills."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
