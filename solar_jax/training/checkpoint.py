"""Checkpoints with orbax: train state, grain iterator state and run metadata, per step.

Saves are asynchronous and keep the last k. The grain iterator's state is captured when
`save` is called (a frozen snapshot), so the background write cannot record a later
position. A restart restores the newest readable step; an unreadable one (a machine died
mid-write, a corrupted file) is reported and the previous one is used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from solar_jax.errors import SolarError

class _FrozenIteratorState:
    """What grain's checkpoint handler needs from an iterator: get_state() as JSON bytes."""

    def __init__(self, state: dict[str, Any]):
        self._json = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._json


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        # gs:// (and other remote) paths go to orbax/tensorstore as they are; pathlib would
        # fold the double slash.
        self.directory = epath.Path(directory) if "://" in str(directory) else Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict[str, Any], force: bool = False) -> bool:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any | None = None,
                step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """Restores `step` (default: the newest readable one) into the abstract state's
        shapes and shardings; sets the data iterator's position. Returns (step, state, meta)."""
        steps = [step] if step is not None else self.all_steps()[::-1]
        if not steps:
            raise SolarError(f"no checkpoint in {self.directory}")
        errors = []
        for s in steps:
            items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the target a restore fills."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
