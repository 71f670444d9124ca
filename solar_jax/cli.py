"""What every command shares: its config flag, one vocabulary, and one edge for errors.

A command module is thin: `main(config)` calls the library, and
`if __name__ == "__main__": cli.run(main, "FILE.py")` does the rest: the host settings,
`--config=configs/FILE.py[:variant]` with `--config.key=value` overrides, and turning bad
input into one line on stderr with exit 2 (no traceback). Library code never reads flags.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from solar_jax import background_errors, host_malloc
from solar_jax.config_files import config_path, floats, load_config, split_list  # noqa: F401  (re-exported)
from solar_jax.errors import RunFailed, SolarError
from solar_jax.hardware import gpu
from solar_jax.parallel import distributed
from solar_jax.hardware import tpu

# XLA CPU flags that were measured to help; they only touch CPU codegen. YNNPACK for dots
# and for reductions (the softmax, RMSNorm and logsumexp sums then run multithreaded); not
# its elementwise fusion, which was slower (docs/results/defaults). Set before the backend
# starts; opt out with SOLAR_JAX_XLA_DEFAULTS=0.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)

# Config keys that were renamed when the commands got one vocabulary: old -> new.
RENAMED_KEYS = {"models": "model_dir", "out_dir": "output_dir"}


def apply_default_xla_flags() -> None:
    if os.environ.get("SOLAR_JAX_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in current]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    tpu.apply_libtpu_flags()  # read only where jax loads libtpu (TPU hosts, plan --compile)
    tpu.quiet_off_tpu()  # libtpu installed on a host without TPU chips: no start-up errors
    gpu.quiet_off_gpu()  # jax's CUDA plugin installed on a host without a GPU: no start-up traceback
    gpu.apply_memory_fraction()  # read only where jax starts a GPU


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: bad input). What libraries reported from background
    threads before (held by background_errors) and while the process winds down (asyncio's
    "Task exception was never retrieved" for each failed write) is the same failure again:
    dropped, and library loggers silenced."""
    line = " ".join(str(message).split())
    background_errors.drop()
    print(f"error: {line}", file=sys.stderr, flush=True)
    pylogging.disable(pylogging.CRITICAL)
    sys.exit(code)


def _check_vocabulary(argv: Sequence[str], config: ml_collections.ConfigDict | None, own_flags: set[str]) -> None:
    """Old key names and bare flags that belong in the config get a line naming the new form."""
    for arg in argv[1:]:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("config."):
            key = name[len("config."):].split(".")[0]
            if key in RENAMED_KEYS and (config is None or key not in config):
                raise SolarError(f"--config.{key} is now --config.{RENAMED_KEYS[key]}")
        elif name not in own_flags and config is not None:
            bare = name[2:] if name.startswith("no") and name[2:] in config else name
            if bare in config or bare in RENAMED_KEYS:
                raise SolarError(f"--{name} is a config key: use --config.{RENAMED_KEYS.get(bare, bare)}=...")


# What flag and config parsing raise on bad input (ml_collections applies --config.x
# overrides while the flag is defined, and reports a missing file on first access).
_PARSE_ERRORS = (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError)


def _config_arg(config_file: str) -> str:
    """The --config value given (the last one, PATH[:VARIANT]), else the command's default file."""
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")]
    return given[-1] if given else f"configs/{config_file}"


def _default_config(config_file: str) -> ml_collections.ConfigDict | None:
    """The command's default config file with the variant given in --config=PATH:VARIANT, or
    None where that variant does not load (the config flag then reports why)."""
    variant = _config_arg(config_file).partition(":")[2] or None
    try:
        return load_config(config_file, variant)
    except ValueError:
        return None


def _parse(config_file: str, define: Callable[[], None] | None) -> ml_collections.ConfigDict:
    before = set(flags.FLAGS)
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "print the traceback of a failure instead of its one-line summary")
    if define:
        define()
    own = set(flags.FLAGS) - before | {"config", "help", "helpshort", "helpfull"}
    # The default config's keys name the right form when an old or bare flag is used
    # (before the config flag is defined: ml_collections applies overrides right then).
    _check_vocabulary(sys.argv, _default_config(config_file), own)
    config_flags.DEFINE_config_file("config", str(config_path(config_file)),
                                    "ml_collections config file[:variant]", lock_config=True)
    flags.FLAGS(sys.argv)
    config = flags.FLAGS.config
    config.keys()  # forces the deferred load error of a bad --config path
    return config


def run(main: Callable[[ml_collections.ConfigDict], None], config_file: str,
        define: Callable[[], None] | None = None, hugepage_malloc: bool = False) -> None:
    """The edge of every command: host settings, flags, then main(config); bad input exits 2
    with one line, no traceback.

    config_file: the default file under configs/ for --config. define: the command's own
    flags besides --config (few: the config carries what a command takes).
    hugepage_malloc: re-execute once under glibc's huge-page malloc (host_malloc.py). Only
    the commands that run train steps ask: the re-exec repeats the package import, which only
    the steps' gain earns back (docs/results/defaults)."""
    if hugepage_malloc:
        host_malloc.reexec_with_hugepage_malloc()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    apply_default_xla_flags()
    try:
        config = _parse(config_file, define)
    except SolarError as e:
        fail(str(e))
    except _PARSE_ERRORS as e:
        # KeyError/AttributeError stringify as reprs; their first argument reads better.
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        text = str(text).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
        if "Traceback (most recent call last)" in text:  # a config file's get_config raised
            text = f"{_config_arg(config_file)}: {text.strip().splitlines()[-1].strip()}"
        fail(f"bad flags or config: {text}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    debug = flags.FLAGS.debug
    if not debug:
        background_errors.install(lambda e: describe_failure(e)[0])
    try:
        main(config)
    except SolarError as e:
        fail(str(e))
    except RunFailed as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001  the one edge: every other failure is one line too
        if debug:
            raise
        fail(*describe_failure(e))


# Files that are not there, not readable or of the wrong kind are bad input (exit 2); other
# OS errors (a full disk, an I/O error) are the machine's (exit 1).
_BAD_INPUT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def describe_failure(e: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an exception a command did not turn into a SolarError."""
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}", 2 if isinstance(e, _BAD_INPUT_OS_ERRORS) else 1
    return f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", 1


def define_distributed_flags() -> None:
    """The multi-host start-up flags of the commands that train (parallel/distributed.py):
    process settings, not part of a run config."""
    flags.DEFINE_enum("distributed", "auto", list(distributed.MODES), "multi-process start: auto (from the env), on, off")
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host GPU)")
    flags.DEFINE_integer("num_processes", 0, "number of processes (multi-host GPU)")
    flags.DEFINE_integer("process_id", -1, "this process's index (multi-host GPU)")


def start_distributed() -> bool:
    """jax.distributed from the flags above; before anything touches a jax backend."""
    f = flags.FLAGS
    return distributed.initialize(f.distributed, f.coordinator_address, f.num_processes, f.process_id)
