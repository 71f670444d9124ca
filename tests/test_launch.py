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
    setup = ("--command 'mkdir -p solar_jax && tar -xzf solar_jax-src.tar.gz -C solar_jax && cd solar_jax && "
             "SOLAR_JAX_ACCELERATOR=tpu bash launch/setup.sh'")
    # The Python bootstrap is shown first; the set-up runs on worker 0 before all.
    assert lines[0].startswith("# launch/setup.sh on each machine: a venv from the first Python >= 3.11")
    assert "uv-managed CPython 3.11" in lines[0]
    assert lines[1:] == [
        f"gcloud compute tpus tpu-vm create solar {where} --accelerator-type v5p-128 --version v2-alpha-tpuv5",
        f"git -C {REPO} archive --format=tar.gz -o /tmp/solar_jax-src.tar.gz HEAD",
        f"gcloud compute tpus tpu-vm scp /tmp/solar_jax-src.tar.gz solar:solar_jax-src.tar.gz {where} --worker=all",
        f"gcloud compute tpus tpu-vm ssh solar {where} --worker=0 {setup}",
        f"gcloud compute tpus tpu-vm ssh solar {where} --worker=all {setup}",
        f"gcloud compute tpus tpu-vm ssh solar {where} --worker=all --command 'set -o pipefail; cd solar_jax && "
        ".venv/bin/python -m solar_jax.train --distributed=on --config=configs/cpt.py:solar "
        "--config.model_dir=/mnt/mistral-7b --config.checkpoint_dir=gs://bucket/solar/ckpt 2>&1 | tee -a train.log'",
        f"gcloud compute tpus tpu-vm delete solar {where} --quiet",
    ]
    # --reuse skips the create; spot slices ask for --spot.
    _, reused, _ = _dry_run("tpu_pod.sh", "--name=solar", "--zone=z", "--accelerator=v6e-64", "--reuse",
                            "--dry_run", "--", *TRAIN)
    assert not any(" create " in line for line in reused) and not any(" delete " in line for line in reused)
    # Booleans read as the commands' do: --x, --x=true, --x=false.
    _, spot, _ = _dry_run("tpu_pod.sh", "--name=solar", "--zone=z", "--accelerator=v4-32", "--spot=true",
                          "--delete=false", "--dry_run=true", "--", *TRAIN)
    assert spot[1].endswith("--spot") and not any(" delete " in line for line in spot)


def test_two_gpu_hosts_dry_run_prints_every_command():
    rc, lines, err = _dry_run("gpu_hosts.sh", "--hosts=gpu0,ml@gpu1", "--port=9000", "--dry_run", "--", *TRAIN)
    assert rc == 0, err
    assert lines.pop(0).startswith("# launch/setup.sh on each machine")
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
                 ["gpu_hosts.sh", "--hosts=", "--", *TRAIN],
                 ["gpu_hosts.sh", "--hosts=a", "--dry_run=maybe", "--", *TRAIN]):
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


# A TPU VM worker as Google's images have it: python3 is 3.10 and no newer Python is on PATH.
PYTHON310 = """#!/bin/bash
echo "python3 $*" >> "$LOG"
case "$*" in
  *version_info*) exit 1 ;;
  *platform*) echo 3.10.12 ;;
  "-m pip install --user --quiet uv") [ -n "$PIP_WORKS" ] || exit 1
    /bin/mkdir -p "$USERBASE/bin" && /bin/cp "$SHIMS/uv.real" "$USERBASE/bin/uv" ;;
  "-m site --user-base") echo "$USERBASE" ;;
  *) exit 1 ;;
esac
"""
# uv makes the venv with its own CPython 3.11; that venv's python logs what pip is asked.
UV = """#!/bin/bash
echo "uv $*" >> "$LOG"
venv="${@: -1}"; /bin/mkdir -p "$venv/bin" && /bin/cp "$SHIMS/python311" "$venv/bin/python"
"""
PYTHON311 = """#!/bin/bash
echo "venv-python $*" >> "$LOG"
"""


def _worker_with_python310(tmp_path, pip_works: bool):
    """Runs a copy of launch/setup.sh (tpu) with only shims and dirname on PATH; (rc, stdout,
    stderr, log of every python3/uv/venv-python call)."""
    shims, work = tmp_path / "shims", tmp_path / "checkout"
    (work / "launch").mkdir(parents=True)
    (work / "launch" / "setup.sh").write_text((REPO / "launch" / "setup.sh").read_text())
    shims.mkdir()
    for name, text in (("python3", PYTHON310), ("uv.real", UV), ("python311", PYTHON311)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    (shims / "dirname").symlink_to(subprocess.run(["which", "dirname"], capture_output=True, text=True).stdout.strip())
    log = tmp_path / "calls.log"
    env = dict(PATH=str(shims), LOG=str(log), SHIMS=str(shims), USERBASE=str(tmp_path / "userbase"),
               SOLAR_JAX_ACCELERATOR="tpu", HOME=str(tmp_path), **({"PIP_WORKS": "1"} if pip_works else {}))
    r = subprocess.run(["/bin/bash", "launch/setup.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    return r, log.read_text().splitlines() if log.exists() else [], work


def test_setup_on_a_python_310_worker_bootstraps_python_311_through_uv(tmp_path):
    r, calls, work = _worker_with_python310(tmp_path, pip_works=True)
    assert r.returncode == 0, r.stderr
    assert "uv-managed CPython 3.11" in r.stdout
    assert "python3 -m pip install --user --quiet uv" in calls
    assert "uv venv --quiet --seed --python 3.11 .venv" in calls
    assert not any(c.startswith("python3 -m venv") for c in calls), calls  # never a 3.10 venv
    assert "venv-python -m pip install --quiet -e . jax[tpu]" in calls
    assert (work / ".venv" / "bin" / "python").exists()


def test_setup_without_any_way_to_python_311_stops_in_one_line_before_installing(tmp_path):
    r, calls, work = _worker_with_python310(tmp_path, pip_works=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: solar_jax needs Python >= 3.11 (python3 here: 3.10.12)")
    assert "install python3.11" in r.stderr and "uv" in r.stderr
    assert not (work / ".venv").exists() and not any("venv" in c for c in calls), calls


def test_setup_refuses_a_venv_made_with_python_310(tmp_path):
    r, _, work = _worker_with_python310(tmp_path, pip_works=True)
    (work / ".venv" / "bin" / "python").write_text("#!/bin/bash\nexit 1\n")  # a 3.10 venv's python fails the check
    r = subprocess.run(["/bin/bash", "launch/setup.sh"], cwd=work, capture_output=True, text=True, timeout=60,
                       env=dict(PATH="/usr/bin:/bin", SOLAR_JAX_ACCELERATOR="tpu"))
    assert r.returncode == 2 and "remove .venv and rerun" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tpu_gcsfuse_mounts_the_bucket_on_every_worker_before_training():
    rc, lines, err = _dry_run("tpu_pod.sh", "--name=solar", "--zone=z", "--accelerator=v5p-128", "--reuse",
                              "--gcsfuse=gs://corpus-bucket:/mnt/corpus", "--dry_run", "--",
                              "--config=configs/cpt.py:solar", "--config.data.train_files=/mnt/corpus/shards")
    assert rc == 0, err
    mount = ("gcloud compute tpus tpu-vm ssh solar --zone z --worker=all --command "
             "'cd solar_jax && bash launch/gcsfuse_mount.sh corpus-bucket /mnt/corpus'")
    assert mount in lines and lines.index(mount) == len(lines) - 2  # after the set-up, before the train command
    for bad in ("corpus-bucket", "corpus-bucket:relative/dir", "corpus-bucket/sub:/mnt/x"):
        rc, _, err = _dry_run("tpu_pod.sh", "--name=solar", "--zone=z", "--accelerator=v5p-128", f"--gcsfuse={bad}",
                              "--dry_run", "--", *TRAIN)
        assert rc == 2 and err.count("\n") == 1 and "--gcsfuse takes BUCKET:/absolute/mount/point" in err, err


GCSFUSE = """#!/bin/bash
echo "gcsfuse $*" >> "$LOG"
"""
SUDO = """#!/bin/bash
echo "sudo $*" >> "$LOG"
exec "$@"
"""


def test_gcsfuse_mount_script_mounts_read_only_and_installs_nothing_when_present(tmp_path):
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in (("gcsfuse", GCSFUSE), ("sudo", SUDO)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    log, mount_point = tmp_path / "calls.log", tmp_path / "mnt" / "corpus"
    env = dict(PATH=f"{shims}:/usr/bin:/bin", LOG=str(log))
    r = subprocess.run(["bash", "launch/gcsfuse_mount.sh", "gs://corpus-bucket/", str(mount_point)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[-1] == f"gcsfuse -o ro --implicit-dirs corpus-bucket {mount_point}"
    assert not any("apt-get" in c for c in calls) and mount_point.is_dir()
    bad = subprocess.run(["bash", "launch/gcsfuse_mount.sh", "gs://corpus-bucket/sub", str(mount_point)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
