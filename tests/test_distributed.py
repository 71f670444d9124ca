"""Multi-host training, tested with two local CPU processes joined by jax.distributed.

Each process has 2 fake CPU devices; the mesh (fsdp=4) spans both, so every parameter is
split across processes. The reference is one process with 4 devices and the same mesh.
"""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, checkpoint_saved, kill_once
from solar_jax.parallel import distributed
from solar_jax.errors import SolarError
from solar_jax.training.metrics import read_metrics
from test_hf_io import hf_tensors

FLAGS = ["--config=configs/cpt.py:tiny", "--config.num_steps=6", "--config.checkpoint_every=3",
         "--config.eval_every=3", "--config.async_checkpoint=false", "--config.mesh.data=1",
         "--config.mesh.fsdp=4", "--distributed=auto"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONUNBUFFERED="1",
                SOLAR_JAX_HEARTBEAT_TIMEOUT="10", SOLAR_JAX_INIT_TIMEOUT="60")


def _train(workdir, *extra, processes: int = 2, timeout: int = 240,
           kill_after_checkpoint: int | None = None) -> list[subprocess.CompletedProcess] | bool:
    """Runs the train command as `processes` cooperating processes; kills any survivor. With
    kill_after_checkpoint=k: SIGKILLs them all once checkpoint k is on disk and returns
    whether that came before they finished."""
    args = [sys.executable, "-m", "solar_jax.train", *FLAGS, f"--config.workdir={workdir}", *extra]
    if processes == 1:
        return [subprocess.run(args, cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=timeout)]
    port = _free_port()
    procs = [subprocess.Popen(args + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                                      f"--process_id={i}"],
                              cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    if kill_after_checkpoint is not None:
        try:
            return kill_once(procs, checkpoint_saved(workdir, kill_after_checkpoint), timeout)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def _losses(workdir):
    return {r["step"]: (r["loss"], r.get("eval_loss")) for r in read_metrics(workdir / "metrics.jsonl")}


def test_two_processes_train_like_one_and_resume_together(tmp_path):
    single = _train(tmp_path / "single", processes=1)[0]
    assert single.returncode == 0, single.stderr[-2000:]
    # Two processes save step 3 together (synchronously) and are SIGKILLed from outside, like
    # a lost pod; a second launch resumes from the shared checkpoint to step 6. A run that
    # finished before the kill is tried again.
    for attempt in range(3):
        workdir = tmp_path / f"multi{attempt}"
        if _train(workdir, kill_after_checkpoint=3):
            break
    else:
        pytest.fail("the processes finished before they could be killed")
    saved = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[0] == "3"
    assert sorted(p.name for p in (workdir / "checkpoints" / "3" / "data").iterdir()
                  if p.suffix == ".json") == ["process_0-of-2.json", "process_1-of-2.json"]
    resumed = _train(workdir)
    assert [r.returncode for r in resumed] == [0, 0], [r.stderr[-1500:] for r in resumed]
    assert "resumed from" in resumed[0].stdout and f"at step {saved[-1]}" in resumed[0].stdout
    # Only process 0 logs (gloo's own connection lines aside).
    assert "config:" not in resumed[1].stdout and "done:" not in resumed[1].stdout
    assert "done: step 6" in resumed[0].stdout

    a, b = _losses(tmp_path / "single"), _losses(workdir)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4, 5, 6]
    for step in a:
        np.testing.assert_allclose(np.array(b[step], float), np.array(a[step], float), rtol=1e-5,
                                   err_msg=f"step {step}")
    # The export is collective (every process gathers, process 0 writes) and complete.
    x, y = hf_tensors(tmp_path / "single" / "hf"), hf_tensors(workdir / "hf")
    assert sorted(x) == sorted(y)
    for k in x:
        np.testing.assert_allclose(y[k], x[k], atol=1e-5, err_msg=k)


def test_distributed_settings_from_flags_and_env(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.settings("auto") is None  # a plain machine stays single-process
    assert distributed.settings("on") == {}  # jax auto-detects (TPU VM slices)
    assert distributed.settings("auto", "h0:1234", 2, 1) == dict(coordinator_address="h0:1234", num_processes=2,
                                                                 process_id=1)
    assert distributed.settings("off", "h0:1234", 2, 1) is None
    with pytest.raises(SolarError, match="needs all of"):
        distributed.settings("auto", "h0:1234", 2)
    with pytest.raises(SolarError, match="process_id=2"):
        distributed.settings("auto", "h0:1234", 2, 2)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert distributed.settings("auto") == {}
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h0:99")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert distributed.settings("auto")["coordinator_address"] == "h0:99"


def test_bad_distributed_flags_exit_2_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "solar_jax.train", *FLAGS, f"--config.workdir={tmp_path}",
                        "--num_processes=2", "--process_id=0"], cwd=REPO, env=_env(1), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "coordinator_address" in r.stderr


def test_sigterm_on_every_host_saves_one_agreed_step(tmp_path):
    """A pod preemption: SIGTERM reaches the hosts at slightly different times; JAX's
    preemption sync point makes both save the same step and exit cleanly."""
    import time

    workdir = tmp_path / "run"
    port = _free_port()
    args = [sys.executable, "-m", "solar_jax.train", *FLAGS, f"--config.workdir={workdir}",
            "--config.num_steps=100000", "--config.checkpoint_every=100000", "--config.eval_every=100000",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    procs = [subprocess.Popen(args + [f"--process_id={i}"], cwd=REPO, env=_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = workdir / "metrics.jsonl"
            if metrics.exists() and len(read_metrics(metrics)) > 3:
                break
            time.sleep(0.2)
        procs[0].send_signal(signal.SIGTERM)
        time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    saved = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and f"saved a checkpoint at step {saved[0]}" in outs[0][0]
    assert all(f"preemption sync point, step={saved[0]}" in err for _, err in outs)


def test_two_processes_reading_only_their_rows_of_shards_train_like_one(tmp_path):
    shards = tmp_path / "tokens"
    r = subprocess.run([sys.executable, "-m", "solar_jax.tokenize", "--config=configs/tokenize.py",
                        "--config.tokenizer=bytes", f"--config.output_dir={shards}", "--config.num_workers=1"],
                       cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    extra = [f"--config.data.train_files={shards}", "--config.data.stream_per_row=True"]
    single = _train(tmp_path / "single", *extra, processes=1)[0]
    assert single.returncode == 0, single.stderr[-2000:]
    multi = _train(tmp_path / "multi", *extra)
    assert [m.returncode for m in multi] == [0, 0], [m.stderr[-1500:] for m in multi]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4, 5, 6]
    for step in a:
        np.testing.assert_allclose(np.array(b[step], float), np.array(a[step], float), rtol=1e-5,
                                   err_msg=f"step {step}")
