"""Shared command-line plumbing: absl flags + ml_collections configs, one-line errors, exit 2.

Library code never reads flags; a command module defines its flags under
`if __name__ == "__main__":` and hands its main to `run`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from absl import flags

from solar_jax.errors import SolarError

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


# XLA CPU flags that were measured to help; they only touch CPU codegen. YNNPACK for dots
# (1.14-1.25x on the train step on 2 cores against XLA's own dot emitter) and for reductions
# (a further 1.08x: the softmax, RMSNorm and logsumexp sums run multithreaded; its
# elementwise fusion was slower, 0.88x). Set before the backend starts; opt out with
# SOLAR_JAX_XLA_DEFAULTS=0.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)


def apply_default_xla_flags() -> None:
    if os.environ.get("SOLAR_JAX_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in current]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: bad input)."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr)
    sys.exit(code)


def define_config(name: str = "config", default_file: str | None = None) -> None:
    """--config=path.py[:variant] with --config.key=value overrides."""
    from ml_collections import config_flags

    default = str(CONFIGS_DIR / default_file) if default_file else None
    config_flags.DEFINE_config_file(name, default, "ml_collections config file[:variant]", lock_config=True)


# What flag and config parsing raise on bad input (ml_collections applies --config.x
# overrides while the flag is defined, and reports a missing file on first access).
_PARSE_ERRORS = (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError)


def run(main: Callable[[list[str]], None], config_file: str | None = None, define: Callable[[], None] | None = None,
        config_required: bool = True) -> None:
    """Defines and parses flags, runs main; bad input exits 2 with one line, no traceback.

    config_file: default file under configs/ for --config (None: --config has no default).
    define: defines the command's other flags.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    apply_default_xla_flags()
    try:
        if define:
            define()
        if config_file is not None or config_required:
            define_config(default_file=config_file)
        argv = flags.FLAGS(sys.argv)
        if "config" in flags.FLAGS:
            if flags.FLAGS.config is None and config_required:
                raise SolarError("--config=configs/FILE.py is required")
            if flags.FLAGS.config is not None:
                flags.FLAGS.config.keys()  # forces the deferred load error of a bad --config path
    except SolarError as e:
        fail(str(e))
    except _PARSE_ERRORS as e:
        # KeyError/AttributeError stringify as reprs; their first argument reads better.
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        text = str(text).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
        fail(f"bad flags or config: {text}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        main(argv)
    except SolarError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", 130)


