"""Helpers shared by benchmarks: subprocess workers that report wall time and peak RSS."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def report(result: dict[str, Any]) -> None:
    """A worker's last stdout line: its JSON result."""
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_worker(module: str, args: list[str]) -> dict[str, Any]:
    """Runs a worker in its own process. Every worker (solar_jax's and its peer's alike) gets
    the host allocator setting the solar_jax commands run under, so both sides compare on
    the same malloc."""
    from solar_jax.host_malloc import hugepage_malloc_env

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=os.environ.get("BENCH_XLA_FLAGS", ""))
    env = hugepage_malloc_env(env) or env
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {module} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_):
        self.seconds = time.perf_counter() - self.start
