"""Host malloc settings for commands: glibc's huge-page tunable, set by re-executing once.

Stdlib only; called by cli.run for the commands that run train steps (train, recipe,
reproduce), never on import.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# glibc malloc serves every buffer over 32 MiB with a fresh mmap and unmaps it on free, so
# each train step page-faults its large temporaries (stacked-layer gradient accumulators and
# residuals, hundreds of MB) 4 KiB at a time (docs/results/defaults). glibc.malloc.hugetlb=1 makes malloc ask for transparent huge pages, which
# cuts those faults 512-fold without keeping freed memory (peak RSS unchanged). glibc reads
# tunables at process start, so a command re-executes itself once with the tunable set.
# Opt out with SOLAR_JAX_MALLOC_DEFAULTS=0.
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def hugepage_malloc_env(environ: dict[str, str]) -> dict[str, str] | None:
    """`environ` plus the huge-page malloc tunable, or None where it is set, opted out of,
    or useless (not Linux, glibc < 2.35, transparent huge pages off)."""
    if environ.get("SOLAR_JAX_MALLOC_DEFAULTS", "1") == "0" or sys.platform != "linux":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    libc, version = platform.libc_ver()
    try:
        too_old = tuple(int(v) for v in version.split(".")[:2]) < (2, 35)
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except (ValueError, OSError):
        return None
    if libc != "glibc" or too_old or "[never]" in thp:
        return None
    return dict(environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGEPAGE_TUNABLE) if t))


def reexec_with_hugepage_malloc() -> None:
    """Replaces this process (same pid, same arguments) by itself under the huge-page malloc
    tunable; only for `python -m solar_jax.<command>`, never inside another program."""
    argv = getattr(sys, "orig_argv", [])
    if len(argv) < 3 or argv[1] != "-m" or not argv[2].startswith("solar_jax."):
        return
    env = hugepage_malloc_env(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
