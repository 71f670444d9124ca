"""Up-scaling and merging: solar_jax's commands against mergekit's, same inputs, same run.

Both sides run as whole commands (process start to exit) on the real model SmolLM2-135M,
alternating, `repeats` times; wall time and the child's peak RSS (os.wait4) are medians.
mergekit runs from its own virtual environment (created on first use with
`pip install torch==2.13.0 mergekit`). Outputs are compared tensor by tensor.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np

from solar_jax.bench.common import gib
from solar_jax.weights.hf import copy_side_files, open_checkpoint, read_hf_config, write_shards
from solar_jax.weights.real_model import ensure_real_model

DEFAULT_VENV = Path.home() / ".cache" / "solar_jax" / "bench-mergekit-venv"


def mergekit_bin(venv: Path) -> Path:
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        print(f"creating {venv} with mergekit (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "torch==2.13.0", "mergekit"], check=True)
    return exe


def timed(cmd: list[str]) -> tuple[float, int]:
    """Runs a command; returns (wall seconds, peak RSS bytes of that process)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def read_dir(path: Path) -> dict[str, np.ndarray]:
    return {k: r.read(k) for k, r in open_checkpoint(path).items()}


def compare(ours: Path, theirs: Path) -> tuple[int, float, list[str]]:
    """(tensors compared, max |difference|, names that differ in set)."""
    a, b = read_dir(ours), read_dir(theirs)
    if "lm_head.weight" in b and "lm_head.weight" not in a:  # mergekit may write the tied head
        b.pop("lm_head.weight")
    names = sorted(set(a) ^ set(b))
    worst = 0.0
    for k in set(a) & set(b):
        worst = max(worst, float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))))
    return len(set(a) & set(b)), worst, names


def make_variant(src: Path, dst: Path, seed: int, scale: float = 0.02) -> None:
    """A perturbed copy of a model (x + scale * std(x) * noise): the second merge input."""
    sources = open_checkpoint(src)
    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True)
    shutil.copy2(src / "config.json", dst / "config.json")
    copy_side_files(src, dst)
    specs = [(k, r.dtype(k), r.shape(k)) for k, r in sources.items()]

    def produce(name):
        x = sources[name].read(name).astype(np.float32)
        return (x + scale * x.std() * rng.standard_normal(x.shape, np.float32)).astype(sources[name].dtype(name))

    write_shards(dst, specs, produce, 5 * 10**9)


def bench(c: ml_collections.ConfigDict) -> None:
    kind = c.benchmark
    model_dir = Path(c.model_dir or ensure_real_model())
    mk = str(mergekit_bin(Path(c.mergekit_venv or DEFAULT_VENV)))
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    try:
        cases = _cases(kind, model_dir, c.get("m", 0), scratch)
        print(f"{kind} on {model_dir.name}, median of {c.repeats} runs (whole commands, this machine)")
        print(f"{'case':22s}{'solar_jax s':>12s}{'mergekit s':>12s}{'time ratio':>12s}"
              f"{'solar_jax RSS':>15s}{'mergekit RSS':>14s}{'tensors':>9s}{'max |diff|':>12s}")
        for name, ours_cmd, yaml_text, tol in cases:
            slug = "".join(ch if ch.isalnum() else "_" for ch in name)
            yaml_path = scratch / f"{slug}.yaml"
            yaml_path.write_text(yaml_text)
            ours_runs, theirs_runs = [], []
            for i in range(c.repeats):
                out_ours, out_theirs = scratch / f"{slug}-ours-{i}", scratch / f"{slug}-mk-{i}"
                ours_runs.append(timed(ours_cmd(out_ours)))
                theirs_runs.append(timed([mk, str(yaml_path), str(out_theirs)]))
                if i == c.repeats - 1:
                    count, diff, mismatch = compare(out_ours, out_theirs)
                shutil.rmtree(out_ours, ignore_errors=True)
                if i < c.repeats - 1:
                    shutil.rmtree(out_theirs, ignore_errors=True)
            ts, tm = statistics.median(r[0] for r in ours_runs), statistics.median(r[0] for r in theirs_runs)
            ms, mm = statistics.median(r[1] for r in ours_runs), statistics.median(r[1] for r in theirs_runs)
            print(f"{name:22s}{ts:12.2f}{tm:12.2f}{ts / tm:11.2f}x{gib(ms):>15s}{gib(mm):>14s}{count:9d}{diff:12.2e}")
            verdict = (ts <= 0.5 * tm) and (ms < mm) and (diff <= tol) and not mismatch
            print(f"  target (time <= 0.5x mergekit, less memory, max |diff| <= {tol:g}): "
                  f"{'MET' if verdict else 'MISSED'}" + (f"; names differ: {mismatch[:3]}" if mismatch else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cases(kind: str, model_dir: Path, m: int, scratch: Path):
    py = [sys.executable, "-m"]
    if kind == "upscale":
        n = read_hf_config(model_dir)["num_hidden_layers"]
        yaml_text = (f"slices:\n  - sources:\n      - model: {model_dir}\n        layer_range: [0, {n - m}]\n"
                     f"  - sources:\n      - model: {model_dir}\n        layer_range: [{m}, {n}]\n"
                     "merge_method: passthrough\ndtype: float32\n")
        ours = lambda out: py + ["solar_jax.upscale", f"--config.model_dir={model_dir}", f"--config.m={m}",
                                 f"--config.output_dir={out}"]
        return [(f"upscale n={n} m={m}", ours, yaml_text, 0.0)]
    variant = scratch / "variant"
    make_variant(model_dir, variant, seed=1)
    a, b = model_dir, variant
    linear_yaml = (f"models:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  - model: {b}\n"
                   f"    parameters: {{weight: 0.5}}\nmerge_method: linear\ndtype: float32\n")
    slerp_yaml = (f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\n"
                  "parameters:\n  t: 0.5\ndtype: float32\n")
    linear = lambda out: py + ["solar_jax.merge", "--config.method=linear", f"--config.model_dir={a},{b}",
                               "--config.weights=0.5,0.5", f"--config.output_dir={out}"]
    slerp = lambda out: py + ["solar_jax.merge", "--config.method=slerp", f"--config.model_dir={a},{b}",
                              "--config.t=0.5", f"--config.output_dir={out}"]
    return [("linear 0.5/0.5", linear, linear_yaml, 0.0), ("slerp t=0.5", slerp, slerp_yaml, 1e-5)]
