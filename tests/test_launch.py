"""launch/ dry runs: the exact commands for a v5p-128 slice and for two GPU hosts."""

import subprocess
import sys

from conftest import REPO

TRAIN = ["--config=configs/cpt.py:solar", "--config.model_dir=/mnt/mistral-7b",
         "--config.checkpoint_dir=gs://bucket/solar/ckpt"]


def _dry_run(script, *args):
    r = subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout.splitlines(), r.stderr


def test_tpu_v5p_128_dry_run_prints_every_command():
    rc, lines, err = _dry_run("tpu_pod.sh", "--name=solar", "--zone=us-east5-a", "--accelerator=v5p-128",
                              "--project=proj", "--delete", "--dry_run", "--", *TRAIN)
    assert rc == 0, err
    where = "--zone us-east5-a --project proj"
    assert lines == [
        f"gcloud compute tpus tpu-vm create solar {where} --accelerator-type v5p-128 --version v2-alpha-tpuv5",
        f"git -C {REPO} archive --format=tar.gz -o /tmp/solar_jax-src.tar.gz HEAD",
        f"gcloud compute tpus tpu-vm scp /tmp/solar_jax-src.tar.gz solar:solar_jax-src.tar.gz {where} --worker=all",
        f"gcloud compute tpus tpu-vm ssh solar {where} --worker=all --command 'mkdir -p solar_jax && tar -xzf "
        "solar_jax-src.tar.gz -C solar_jax && cd solar_jax && SOLAR_JAX_ACCELERATOR=tpu bash launch/setup.sh'",
        f"gcloud compute tpus tpu-vm ssh solar {where} --worker=all --command 'set -o pipefail; cd solar_jax && "
        ".venv/bin/python -m solar_jax.train --distributed=on --config=configs/cpt.py:solar "
        "--config.model_dir=/mnt/mistral-7b --config.checkpoint_dir=gs://bucket/solar/ckpt 2>&1 | tee -a train.log'",
        f"gcloud compute tpus tpu-vm delete solar {where} --quiet",
    ]
    # --reuse skips the create; spot slices ask for --spot.
    _, reused, _ = _dry_run("tpu_pod.sh", "--name=solar", "--zone=z", "--accelerator=v6e-64", "--reuse",
                            "--dry_run", "--", *TRAIN)
    assert not any(" create " in line for line in reused) and not any(" delete " in line for line in reused)


def test_two_gpu_hosts_dry_run_prints_every_command():
    rc, lines, err = _dry_run("gpu_hosts.sh", "--hosts=gpu0,ml@gpu1", "--port=9000", "--dry_run", "--", *TRAIN)
    assert rc == 0, err
    train = ("--config=configs/cpt.py:solar --config.model_dir=/mnt/mistral-7b "
             "--config.checkpoint_dir=gs://bucket/solar/ckpt 2>&1 | tee -a train.log'")
    assert lines == [
        f"rsync -az --delete --exclude=.venv --exclude=runs --exclude=.git {REPO}/ gpu0:solar_jax/",
        "ssh -o BatchMode=yes gpu0 'cd solar_jax && SOLAR_JAX_ACCELERATOR=cuda bash launch/setup.sh'",
        f"rsync -az --delete --exclude=.venv --exclude=runs --exclude=.git {REPO}/ ml@gpu1:solar_jax/",
        "ssh -o BatchMode=yes ml@gpu1 'cd solar_jax && SOLAR_JAX_ACCELERATOR=cuda bash launch/setup.sh'",
        "ssh -o BatchMode=yes gpu0 'set -o pipefail; cd solar_jax && .venv/bin/python -m solar_jax.train "
        f"--coordinator_address=gpu0:9000 --num_processes=2 --process_id=0 {train} &",
        "ssh -o BatchMode=yes ml@gpu1 'set -o pipefail; cd solar_jax && .venv/bin/python -m solar_jax.train "
        f"--coordinator_address=gpu0:9000 --num_processes=2 --process_id=1 {train} &",
    ]


def test_bad_launch_input_exits_2_in_one_line():
    for args in (["tpu_pod.sh", "--name=x", "--zone=z", "--accelerator=v9-8", "--", *TRAIN],
                 ["gpu_hosts.sh", "--hosts=gpu0", "--dry_run"],
                 ["gpu_hosts.sh", "--hosts=", "--", *TRAIN]):
        rc, lines, err = _dry_run(*args)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), (args, err)


def test_launcher_needs_only_the_standard_library():
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('jax', 'numpy', 'flax', 'absl'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "sys.argv = ['x', 'gpu', '--hosts=a,b', '--dry_run', '--', '--config=c.py']\n"
            "import runpy; runpy.run_path('launch/launcher.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--process_id=1" in r.stdout, r.stderr
