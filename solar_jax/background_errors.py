"""What libraries report from background threads, held so a failed command says one line.

A checkpoint write that fails makes orbax log an ERROR from each of its writer threads,
tensorstore call back into an event loop orbax already closed, and then the command's own
edge fails on the same error with the line that says what to do. Those earlier reports
are held here, one line each (no tracebacks), instead of printed as they come:
  - the command fails (cli.fail): they are dropped; its one line says it all;
  - the command ends well: they are printed at exit, so nothing is silently lost;
  - a held report older than HOLD_SECONDS is printed then (a long run does not keep a
    library error to itself for days).
`--debug` installs none of this: every library log and traceback shows as it comes.
"""

from __future__ import annotations

import atexit
import logging as pylogging
import sys
import threading
import time
from typing import Callable

HOLD_SECONDS = 300.0

_lock = threading.Lock()
_held: list[tuple[float, str]] = []
_seen: set[str] = set()
_state = {"failed": False, "timer": None}


def install(describe: Callable[[BaseException], str]) -> None:
    """Routes library error logs (absl, asyncio), uncaught errors of background threads,
    stray and unraisable exceptions through the hold; describe(exception) -> one line."""
    def thread_error(args) -> None:
        if args.exc_type is not SystemExit:
            hold(f"error in a background thread ({args.thread.name if args.thread else '?'}): "
                 f"{describe(args.exc_value)}")

    def stray_error(exc_type, exc_value, tb) -> None:
        hold(f"error (background): {describe(exc_value)}")

    threading.excepthook = thread_error
    sys.excepthook = stray_error
    sys.unraisablehook = lambda args: stray_error(args.exc_type, args.exc_value, args.exc_traceback)
    for name in ("absl", "asyncio"):
        pylogging.getLogger(name).addFilter(_one_line_or_held)
    atexit.register(flush)


def _one_line_or_held(record: pylogging.LogRecord) -> bool:
    """Errors are held; warnings and below keep their message, in one line, no traceback."""
    record.exc_info, record.exc_text = None, None
    record.msg, record.args = " ".join(record.getMessage().split()), None
    if record.levelno >= pylogging.ERROR:
        hold(f"{record.levelname}:{record.name}:{record.msg}")
        return False
    return True


def hold(line: str) -> None:
    line = " ".join(line.split())
    with _lock:
        if _state["failed"] or line in _seen:  # repeats of one failure say nothing new
            return
        _seen.add(line)
        _held.append((time.monotonic(), line))
        _arm_timer()


def _arm_timer() -> None:
    """(under _lock) A timer for when the oldest held report is due, if none is set."""
    if _state["timer"] is None and _held:
        delay = max(0.0, _held[0][0] + HOLD_SECONDS - time.monotonic())
        timer = _state["timer"] = threading.Timer(delay, _on_timer)
        timer.daemon = True
        timer.start()


def _on_timer() -> None:
    flush(older_than=HOLD_SECONDS - 0.01)
    with _lock:
        _state["timer"] = None
        _arm_timer()


def flush(older_than: float = 0.0) -> None:
    """Prints the held reports (those held at least `older_than` seconds)."""
    now = time.monotonic()
    with _lock:
        due = [line for t, line in _held if now - t >= older_than]
        _held[:] = [(t, line) for t, line in _held if now - t < older_than]
    for line in due:
        print(line, file=sys.stderr, flush=True)


def drop() -> None:
    """The command failed with its own line: what was held (and anything reported while the
    process winds down) is that failure again."""
    with _lock:
        _state["failed"] = True
        _held.clear()
