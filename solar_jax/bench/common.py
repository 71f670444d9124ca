"""What benchmarks share: running a worker in its own process, and printing figures.

A worker is given its parameters as one JSON argument and answers with one JSON line
(measure.report). solar_jax's workers run as `python -m solar_jax.bench.worker`; the peers'
as the script peers.py, which never imports solar_jax (nor jax)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from solar_jax.bench.measure import RESULT_PREFIX
from solar_jax.host_malloc import hugepage_malloc_env

PEERS_SCRIPT = Path(__file__).with_name("peers.py")


def run_worker(side: str, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Runs `job` for `side` ("solar_jax" or "peer") in a fresh process; returns its result.

    Both sides get the host allocator setting the solar_jax commands run under, and the same
    XLA_FLAGS (BENCH_XLA_FLAGS, default none), so they compare on the same host settings."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=os.environ.get("BENCH_XLA_FLAGS", ""))
    env = hugepage_malloc_env(env) or env
    entry = ["-m", "solar_jax.bench.worker"] if side == "solar_jax" else [str(PEERS_SCRIPT)]
    cmd = [sys.executable, *entry, job, json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} worker {job} {params} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
