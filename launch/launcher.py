"""Start a training job on a TPU VM slice or on a list of GPU hosts; --dry_run prints every
command instead of running it.

  python3 launch/launcher.py tpu --name=solar --zone=us-east5-a --accelerator=v5p-128 \\
      [--project=P] [--spot] [--reuse] [--delete] [--gcsfuse=BUCKET:/mnt/dir] [--dry_run] \\
      -- --config=configs/cpt.py:solar ...
  python3 launch/launcher.py gpu --hosts=gpu0,gpu1 [--port=8476] [--dry_run] -- --config=... ...

TPU: create (or --reuse) the slice, copy this checkout (git archive of HEAD) to every worker,
install it (launch/setup.sh with jax[tpu]) on worker 0 first, then on all (a broken set-up
fails once, fast), mount --gcsfuse buckets read-only on every worker (token shards are then
read in place, each host fetching only its records), run the train command on all workers at once (`--worker=all`;
jax.distributed auto-detects the slice), stream the logs, and with --delete tear the slice
down afterwards. GPU hosts: rsync the checkout to each host and set it up, host 0 first and
one after another, then start one process per host over ssh with host 0 as the
coordinator, every line prefixed with its host; if one process fails the others are stopped.

Flags follow the commands' conventions: snake_case names, booleans as `--x`, `--x=true` or
`--x=false`, one-line errors with exit 2. It is not an ml_collections config file because
it must run where solar_jax is not installed: the train command's config follows `--`.

Standard library only: runs on a laptop that has gcloud/ssh but not jax.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "solar_jax-src.tar.gz"
REMOTE_DIR = "solar_jax"

# Default TPU VM software versions per generation (gcloud --version).
TPU_RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
                "v6e": "v2-alpha-tpuv6e"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _boolean(text: str) -> bool:
    """--flag, --flag=true/false (as the commands' absl booleans read them)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _add_boolean(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", type=_boolean, nargs="?", const=True, default=False, help=help)


def tpu_runtime(accelerator: str) -> str:
    generation = accelerator.split("-")[0]
    if generation not in TPU_RUNTIMES:
        raise ValueError(f"unknown TPU accelerator {accelerator!r}; known generations: {', '.join(TPU_RUNTIMES)}")
    return TPU_RUNTIMES[generation]


def remote_train(train_args: list[str]) -> str:
    """The shell line each worker runs: the train command inside the checkout, logged to a file."""
    cmd = shlex.join([".venv/bin/python", "-m", "solar_jax.train", *train_args])
    # pipefail: the worker's exit status is the train command's, not tee's.
    return f"set -o pipefail; cd {REMOTE_DIR} && {cmd} 2>&1 | tee -a train.log"


def gcsfuse_mounts(text: str) -> list[tuple[str, str]]:
    """'bucket:/mnt/dir[,bucket2:/mnt/dir2]' -> [(bucket, mount point)]."""
    mounts = []
    for item in (x for x in text.split(",") if x):
        bucket, sep, mount_point = item.removeprefix("gs://").partition(":")
        if not sep or not bucket or "/" in bucket.rstrip("/") or not mount_point.startswith("/"):
            raise ValueError(f"--gcsfuse takes BUCKET:/absolute/mount/point, got {item!r}")
        mounts.append((bucket.rstrip("/"), mount_point))
    return mounts


def tpu_commands(a) -> list[list[str]]:
    where = ["--zone", a.zone] + (["--project", a.project] if a.project else [])
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    cmds = []
    if not a.reuse:
        create = tpu + ["create", a.name, *where, "--accelerator-type", a.accelerator,
                        "--version", a.version or tpu_runtime(a.accelerator)]
        cmds.append(create + (["--spot"] if a.spot else []))
    cmds.append(["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", f"/tmp/{ARCHIVE}", "HEAD"])
    cmds.append(tpu + ["scp", f"/tmp/{ARCHIVE}", f"{a.name}:{ARCHIVE}", *where, "--worker=all"])
    setup = (f"mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} -C {REMOTE_DIR} && cd {REMOTE_DIR} && "
             f"SOLAR_JAX_ACCELERATOR=tpu bash launch/setup.sh")
    # Worker 0 first: a set-up that breaks (no Python >= 3.11 to be had, pip refusing)
    # fails once, fast, before 16 or 64 workers fail the same way.
    cmds.append(tpu + ["ssh", a.name, *where, "--worker=0", "--command", setup])
    cmds.append(tpu + ["ssh", a.name, *where, "--worker=all", "--command", setup])
    for bucket, mount_point in a.gcsfuse:
        mount = f"cd {REMOTE_DIR} && bash launch/gcsfuse_mount.sh {shlex.quote(bucket)} {shlex.quote(mount_point)}"
        cmds.append(tpu + ["ssh", a.name, *where, "--worker=all", "--command", mount])
    cmds.append(tpu + ["ssh", a.name, *where, "--worker=all", "--command",
                       remote_train(["--distributed=on", *a.train_args])])
    if a.delete:
        cmds.append(tpu + ["delete", a.name, *where, "--quiet"])
    return cmds


def gpu_commands(a) -> tuple[list[list[str]], list[tuple[str, list[str]]]]:
    """(setup commands, run one after another; [(host, run command)], started together)."""
    hosts = [h for h in a.hosts.split(",") if h]
    ssh = ["ssh", "-o", "BatchMode=yes"]
    setup = []
    for host in hosts:
        setup.append(["rsync", "-az", "--delete", "--exclude=.venv", "--exclude=runs", "--exclude=.git",
                      f"{REPO}/", f"{host}:{REMOTE_DIR}/"])
        setup.append(ssh + [host, f"cd {REMOTE_DIR} && SOLAR_JAX_ACCELERATOR=cuda bash launch/setup.sh"])
    coordinator = f"{hosts[0].split('@')[-1]}:{a.port}"
    runs = []
    for i, host in enumerate(hosts):
        flags = [f"--coordinator_address={coordinator}", f"--num_processes={len(hosts)}", f"--process_id={i}"]
        runs.append((host, ssh + [host, remote_train([*flags, *a.train_args])]))
    return setup, runs


def _run_prefixed(runs: list[tuple[str, list[str]]]) -> int:
    """Starts every host's process, prefixes its lines with the host, stops all on a failure."""
    procs = [(host, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for host, cmd in runs]

    def pump(host, proc):
        for line in proc.stdout:
            sys.stdout.write(f"[{host}] {line}")
            sys.stdout.flush()

    threads = [threading.Thread(target=pump, args=hp, daemon=True) for hp in procs]
    for t in threads:
        t.start()
    code = 0
    while any(p.poll() is None for _, p in procs):
        failed = [p.returncode for _, p in procs if p.poll() not in (None, 0)]
        if failed:
            code = failed[0]
            for _, p in procs:
                if p.poll() is None:
                    p.terminate()
        try:
            procs[0][1].wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    for t in threads:
        t.join(timeout=5)
    return code or max((p.returncode for _, p in procs), default=0)


# What launch/setup.sh does on a worker or host, printed by --dry_run (the worker's Python
# is only known there). TPU VM images are Ubuntu 22.04 with Python 3.10; jax 0.10 needs 3.11.
SETUP_NOTE = ("# launch/setup.sh on each machine: a venv from the first Python >= 3.11 of python3, python3.11, "
              "python3.12, python3.13; else a uv-managed CPython 3.11 (uv from PATH, else pip install --user uv); "
              "else it stops with one line saying what to install")


def _execute(cmds: list[list[str]], dry_run: bool) -> None:
    if dry_run:
        print(SETUP_NOTE)
    for cmd in cmds:
        print(("" if dry_run else "+ ") + shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)


def parse(argv: list[str]) -> argparse.Namespace:
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    else:
        train_args = []
    p = _Parser(prog="launch/launcher.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="target", required=True)
    t = sub.add_parser("tpu", help="a TPU VM slice (gcloud)")
    t.add_argument("--name", required=True)
    t.add_argument("--zone", required=True)
    t.add_argument("--accelerator", required=True, help="e.g. v5p-128, v6e-64, v4-32")
    t.add_argument("--project", default="")
    t.add_argument("--version", default="", help="TPU VM software version (default: per generation)")
    _add_boolean(t, "spot", "a spot (preemptible) slice")
    _add_boolean(t, "reuse", "use an existing slice of that name")
    _add_boolean(t, "delete", "delete the slice when the job ends")
    t.add_argument("--gcsfuse", default="", help="BUCKET:/mnt/dir[,...]: mount read-only on every worker")
    _add_boolean(t, "dry_run", "print every command instead of running it")
    g = sub.add_parser("gpu", help="GPU hosts over ssh")
    g.add_argument("--hosts", required=True, help="comma-separated [user@]host list; the first coordinates")
    g.add_argument("--port", type=int, default=8476, help="coordinator port on the first host")
    _add_boolean(g, "dry_run", "print every command instead of running it")
    for s in (t, g):
        s.error = p.error  # one-line errors from the sub-commands too
    a = p.parse_args(argv)
    a.train_args = train_args
    if not any(x.startswith("--config=") for x in train_args):
        p.error("give the train command's flags after --, e.g. -- --config=configs/cpt.py:solar")
    if a.target == "tpu":
        try:
            tpu_runtime(a.accelerator)
            a.gcsfuse = gcsfuse_mounts(a.gcsfuse)
        except ValueError as e:
            p.error(str(e))
    elif not [h for h in a.hosts.split(",") if h]:
        p.error("--hosts is empty")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        if a.target == "tpu":
            _execute(tpu_commands(a), a.dry_run)
            return 0
        setup, runs = gpu_commands(a)
        _execute(setup, a.dry_run)
        if a.dry_run:
            for _, cmd in runs:
                print(shlex.join(cmd) + " &")
            return 0
        return _run_prefixed(runs)
    except subprocess.CalledProcessError as e:
        print(f"error: {shlex.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e.filename} is not installed", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
