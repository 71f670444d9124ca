"""What a benchmark worker measures about itself: wall time, resident memory, and its
result line. Standard library only: the peers' workers (peers.py, run as a script) import
this file without importing solar_jax, so their time and memory hold none of ours."""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def report(result: dict[str, Any]) -> None:
    """A worker's last stdout line: its JSON result."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_):
        self.seconds = time.perf_counter() - self.start
