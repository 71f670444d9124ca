"""Fault injection: SIGKILL at random points of upscale, merge, export and training (seeded),
then the same command again. The result equals an uninterrupted run's, and no temporary
data is left behind (the killed writer's sibling is removed by the next write)."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, kill_once, metrics_reached, run_command
from solar_jax.training.metrics import read_metrics
from tests.test_hf_io import hf_tensors

ENV = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")


def _kill_while_writing(args, out, rng: random.Random, window: float) -> int:
    """Starts `python -m args`, waits until its temporary output sibling appears (the write
    has begun), sleeps a random part of `window` seconds, then SIGKILLs it. Returns the
    exit status (-9 when it was killed, 0 when it finished first)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(out.parent.glob(f".{out.name}.tmp-*")):
            time.sleep(rng.uniform(0, window))
            proc.kill()
            break
        time.sleep(0.005)
    return proc.wait()


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("command", ["upscale", "merge", "export"])
def test_sigkill_mid_write_then_rerun_equals_an_uninterrupted_run(command, real_model_dir, tmp_path):
    if command == "export":  # a run's checkpoint -> HF dir
        run = tmp_path / "run"
        r = run_command("solar_jax.train", "--config=configs/cpt.py:tiny", f"--config.workdir={run}",
                        "--config.upscale_m=-1", "--config.num_steps=2", "--config.export.enabled=False")
        assert r.returncode == 0, r.stderr[-2000:]
        flags = [f"--config.workdir={run}"]
    elif command == "upscale":
        flags = [f"--config.model_dir={real_model_dir}", "--config.m=8"]
    else:
        flags = ["--config.method=slerp", f"--config.model_dir={real_model_dir},{real_model_dir}", "--config.t=0.3"]
    straight = tmp_path / "straight"
    r = run_command(f"solar_jax.{command}", *flags, f"--config.output_dir={straight}")
    assert r.returncode == 0, r.stderr[-2000:]
    expected = hf_tensors(straight)
    cut_short = 0
    for seed in range(2):
        out = tmp_path / f"out{seed}"
        status = _kill_while_writing([f"solar_jax.{command}", *flags, f"--config.output_dir={out}"], out,
                                     random.Random(seed), window=0.6)
        if status == -signal.SIGKILL:
            assert not out.exists() or hf_tensors(out).keys() == expected.keys()  # renamed whole, or not at all
            cut_short += not out.exists()
        r = run_command(f"solar_jax.{command}", *flags, f"--config.output_dir={out}", "--config.overwrite=True")
        assert r.returncode == 0, r.stderr[-2000:]
        got = hf_tensors(out)
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
        assert _leftovers(out) == [], _leftovers(out)
    if command != "export":  # the tiny run's export is written in milliseconds
        assert cut_short >= 1  # at least one kill landed mid-write


def test_sigkill_at_random_steps_then_resume_equals_an_uninterrupted_run(tmp_path):
    flags = ["--config=configs/cpt.py:tiny", "--config.upscale_m=-1", "--config.num_steps=12",
             "--config.checkpoint_every=2", "--config.eval_every=100"]
    straight = run_command("solar_jax.train", *flags, f"--config.workdir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if r.get("loss")}
    for seed in range(2):
        workdir = tmp_path / f"run{seed}"
        at = random.Random(seed).randint(1, 11)  # kill once this many steps are logged (mid-step or mid-save)
        proc = subprocess.Popen([sys.executable, "-m", "solar_jax.train", *flags, f"--config.workdir={workdir}"],
                                cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_once([proc], metrics_reached(workdir, at), timeout=300)
        r = run_command("solar_jax.train", *flags, f"--config.workdir={workdir}")
        assert r.returncode == 0, r.stderr[-2000:]
        got = {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r.get("loss")}
        assert got == losses  # every step, bitwise (steps re-run after the kill log the same losses)
        x, y = hf_tensors(tmp_path / "straight" / "hf"), hf_tensors(workdir / "hf")
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        tmp = [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name] + _leftovers(workdir / "hf")
        assert tmp == [], tmp
