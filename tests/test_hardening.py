"""Bad input is one line, faults are survived, nothing is silently wrong: one test per class
of case (the safetensors reader has its own differential fuzz in test_safetensors_fuzz.py)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, run_command, run_main
from solar_jax.config_files import load_config
from solar_jax.errors import RunFailed, SolarError
from solar_jax.models.config import ModelConfig
from solar_jax.data import text as text_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import sft_data, task_data
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.checkpoint import _chain_text, _write_failure_reason, check_free_space
from solar_jax.training.metrics import MetricsWriter, read_metrics
from solar_jax.training.runs import read_run_record
from solar_jax.weights.outdir import atomic_output_dir, remove_stale_siblings, _host

TRAIN = ["solar_jax.train", "--config=configs/cpt.py:tiny", "--config.upscale_m=-1"]


BAR = re.compile(r"^[\w ()]+:\s+\d+%\|")  # a tqdm progress bar's line


def _shown(stderr: str) -> list[str]:
    """The lines stderr holds besides progress bars (a bar redrawn with \r keeps its last state)."""
    return [shown for line in stderr.split("\n")
            if (shown := line.split("\r")[-1].strip()) and not BAR.match(shown)]


def _one_line(r, code=2):
    lines = _shown(r.stderr)
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    return lines[0]


# ---- bad input: one line, exit 2 ------------------------------------------------------------

@pytest.mark.parametrize("edit, match", [
    (lambda c: c.pop("num_hidden_layers"), "config.json lacks num_hidden_layers"),
    (lambda c: c.update(num_attention_heads=0), "num_attention_heads must be a positive integer, got 0"),
    (lambda c: c.update(hidden_size="64"), "hidden_size must be a positive integer"),
])
def test_a_broken_config_json_is_one_line(tiny_hf, tmp_path, edit, match):
    _, src = tiny_hf("llama_gqa")
    broken = tmp_path / "model"
    shutil.copytree(src, broken)
    config = json.loads((broken / "config.json").read_text())
    edit(config)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SolarError, match=match):
        ModelConfig.from_hf_config(config)
    if "num_hidden_layers" in match:  # the command's one line, once
        r = run_command("solar_jax.convert", f"--config.model_dir={broken}", f"--config.output_dir={tmp_path / 'out'}",
                        timeout=120)
        assert match in _one_line(r)
        assert not (tmp_path / "out").exists()


def test_unreadable_data_files_name_themselves(tmp_path):
    bad_text = tmp_path / "latin1.txt"
    bad_text.write_bytes("caf\xe9 au lait\n\nmore text".encode("latin-1"))
    with pytest.raises(SolarError, match=r"latin1.txt: not UTF-8 text \(byte 3"):
        text_lib.read_documents([bad_text])
    bad_jsonl = tmp_path / "rows.jsonl"
    bad_jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(SolarError, match="rows.jsonl: not UTF-8 text"):
        text_lib.read_documents([bad_jsonl])
    fake = tmp_path / "data.parquet"
    fake.write_text("this is not parquet")
    with pytest.raises(SolarError, match="data.parquet: not a readable parquet file"):
        text_lib.read_documents([fake])
    with pytest.raises(SolarError, match="data.parquet: not a readable parquet file"):
        sft_data.read_rows(str(fake))


def test_a_workdir_that_is_a_file_and_an_unknown_variant_are_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("")
    assert "is a file, not a directory" in _one_line(run_command(*TRAIN, f"--config.workdir={workdir}"))
    line = _one_line(run_command("solar_jax.train", "--config=configs/cpt.py:huge"))
    assert line == "error: bad flags or config: configs/cpt.py:huge: ValueError: unknown variant 'huge'; known: " \
                   "default, tiny, solar"


def test_merge_parameters_are_checked_against_their_meaning(tiny_hf, tmp_path):
    # the merge command's main, in this process (its exit-2 edge is test_layout's)
    _, a = tiny_hf("llama_gqa")
    for t in ("1.5", "-0.3"):
        with pytest.raises(SolarError, match=re.escape("slerp t must be in [0, 1]")):
            run_main("merge", method="slerp", model_dir=f"{a},{a}", t=t, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # Negative weights are meaningful for the task-vector methods (task negation).
    base = tmp_path / "base"
    shutil.copytree(a, base)
    run_main("merge", method="task_arithmetic", base=str(base), model_dir=str(a), weights="-0.5",
             output_dir=str(tmp_path / "neg"))
    assert list((tmp_path / "neg").glob("*.safetensors"))


def test_rows_whose_prompts_are_all_empty_are_refused_and_some_are_counted():
    tok = tokenizer_lib.ByteTokenizer()
    empty = [(f"f:{i}", {"prompt": " ", "completion": f"answer {i}"}) for i in range(3)]
    with pytest.raises(SolarError, match="every one of the 3 rows has an empty prompt"):
        sft_data.sft_examples(empty, "solar", tok, 64)
    pairs = [(f"f:{i}", {"prompt": "", "chosen": "yes", "rejected": "no"}) for i in range(2)]
    with pytest.raises(SolarError, match="every one of the 2 rows has an empty prompt"):
        sft_data.dpo_examples(pairs, "solar", tok, 64)
    mixed = empty[:1] + [("f:9", {"prompt": "Say hi.", "completion": "hi"})]
    _, counts = sft_data.sft_examples(mixed, "solar", tok, 64)
    assert counts.empty_prompts == 1 and "1 with an empty prompt" in counts.report("sft data")


def test_a_planted_pickle_as_the_reference_cache_is_never_loaded(tmp_path):
    np.save(tmp_path / "dpo_reference_train.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    calls = []

    def reference(examples):
        calls.append(len(examples))
        return np.ones((len(examples), 2), np.float32)

    logps = task_data._cached_reference(tmp_path, "train", [{}, {}], reference)
    assert calls == [2] and logps.shape == (2, 2)  # recomputed, and the cache rewritten as plain floats
    assert np.load(tmp_path / "dpo_reference_train.npy", allow_pickle=False).dtype == np.float32


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(tmp_path):
    code = textwrap.dedent("""
        import sys
        from solar_jax import cli
        def main(c):
            raise KeyError("boom")
        sys.argv = ["x", *sys.argv[1:]]
        cli.run(main, "verify.py")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert _one_line(r, 1) == "error: KeyError: 'boom' (rerun with --debug for the traceback)"
    r = subprocess.run([sys.executable, "-c", code, "--debug"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "KeyError: 'boom'" in r.stderr


# ---- run state: resume, records, validation before writing ---------------------------------

def test_a_failed_start_leaves_nothing_and_a_finished_run_says_so(tmp_path):
    workdir = tmp_path / "run"
    c = load_config("cpt.py", "tiny")
    c.upscale_m = -1
    c.data.train_files = str(tmp_path / "none.txt")
    with pytest.raises(SolarError, match="does not exist"):
        train_and_evaluate(c, str(workdir))
    assert not workdir.exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    workdir.mkdir()
    c.data.train_files = str(empty)
    with pytest.raises(SolarError, match="training data is empty"):
        train_and_evaluate(c, str(workdir))
    assert list(workdir.iterdir()) == []  # no run.json, no empty checkpoints/: the next run is not blocked
    flags = [f"--config.workdir={workdir}", "--config.num_steps=2", "--config.export.enabled=False"]
    assert run_command(*TRAIN, *flags).returncode == 0
    again = run_command(*TRAIN, *flags)
    assert again.returncode == 0 and "already complete at step 2" in again.stdout, again.stderr


def test_torn_metrics_lines_and_unreadable_run_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    writer = MetricsWriter(tmp_path)
    writer.write(3, {"loss": 1.25})
    writer.close()
    assert path.read_text().splitlines()[-1] == '{"step": 3, "loss": 1.25}'
    assert [r["loss"] for r in read_metrics(path)] == [2.0, 1.5, 1.25]
    (tmp_path / "run.json").write_text("")
    with pytest.raises(SolarError, match="run.json is unreadable \\(empty\\)"):
        read_run_record(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(SolarError, match="not a solar_jax run record"):
        read_run_record(tmp_path)


# ---- faults: full disks, dead writers, the umask ---------------------------------------------

def _with_file_size_limit(kib: int, *command: str, timeout: int) -> subprocess.CompletedProcess:
    """`python -m command` where no file may grow past `kib` KiB: writes past it fail with
    EFBIG ("File too large"), as writes to a full disk fail with ENOSPC. (bash sets the
    limit, and ignores SIGXFSZ for the child, so the test process never forks with jax loaded.)"""
    script = f"trap '' XFSZ; ulimit -f {kib}; exec {shlex.join([sys.executable, '-m', *command])}"
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=dict(os.environ, XLA_FLAGS=""),
                          capture_output=True, text=True, timeout=timeout)


def test_a_failed_writes_reason_is_the_os_words_wherever_the_message_puts_them():
    long_path = "/tmp/" + "d" * 300 + "/2.orbax-checkpoint-tmp/ocdbt.process_0/"
    outer = RuntimeError(f'OUT_OF_RANGE: Error writing "a/0.0" at local file "{long_path}": Failed writing')
    outer.__cause__ = OSError("Failed to write 1414402 bytes to file 17: File too large")
    assert _write_failure_reason(_chain_text(outer)) == "File too large"  # past 200 chars, in the cause
    assert _write_failure_reason("write failed: No space left on device [source=x]") == "No space left on device"
    assert _write_failure_reason("Odd failure [os_error_code='99']") == "Odd failure"
    unknown = _write_failure_reason(f'CANCELLED: writer stopped at "{long_path}"')
    assert unknown == 'CANCELLED: writer stopped at "..."'


def test_a_write_that_fails_is_one_line_and_leaves_nothing(tiny_hf, tmp_path):
    _, src = tiny_hf("llama_gqa")
    r = _with_file_size_limit(20, "solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1",
                              f"--config.output_dir={tmp_path / 'up'}", timeout=120)
    assert "File too large" in _one_line(r, 1)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary sibling
    # Training: the failed checkpoint's temporary dir is removed, the line names the last good one.
    workdir = tmp_path / "run"
    r = _with_file_size_limit(290, *TRAIN, f"--config.workdir={workdir}", "--config.num_steps=4",
                              "--config.checkpoint_every=2", timeout=300)
    last = _shown(r.stderr)[-1]
    assert r.returncode == 1 and last.startswith("error: could not write the checkpoint of step 2"), r.stderr[-2000:]
    # orbax's writer threads logged the same failure before: held, then dropped for this line.
    assert [line for line in _shown(r.stderr) if "error" in line.lower()] == [last], r.stderr[-3000:]
    assert "File too large; the last good checkpoint is none" in last
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


def test_a_place_the_user_may_not_write_is_one_line(tiny_hf, tmp_path):
    # /sys refuses new entries to every user, root included (EPERM), on any Linux machine.
    _, src = tiny_hf("llama_gqa")
    denied = "/sys/solar_jax_test"
    for command in ((*TRAIN, f"--config.workdir={denied}/run", "--config.num_steps=2"),
                    ("solar_jax.upscale", f"--config.model_dir={src}", "--config.m=1", f"--config.output_dir={denied}/up"),
                    ("solar_jax.merge", f"--config.model_dir={src},{src}", f"--config.output_dir={denied}/merged")):
        line = _one_line(run_command(*command))
        assert line.endswith(f"Operation not permitted: {denied}") or "Permission denied" in line, line


def test_a_save_the_disk_cannot_hold_is_refused_before_writing(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from solar_jax.training import checkpoint

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    state = {"w": jnp.ones((256, 256), jnp.float32)}  # 256 KiB
    ckpt.save(1, state, None, {"step": 1})
    real_usage = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=200 * 1024))
    with pytest.raises(RunFailed, match=r"not enough free disk for the checkpoint of step 2 .* needs ~0.00 GiB, "
                                        r"0.00 GiB are free; the last good checkpoint is step 1"):
        ckpt.save(2, state, None, {"step": 2})
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]  # nothing of step 2 written
    check_free_space(tmp_path / "checkpoints", 1024, "a small write", [])  # real free space: enough


def test_checkpoint_compression_is_a_choice_and_either_format_restores(tmp_path):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp

    from solar_jax.training import checkpoint

    # Smooth values: zstd shrinks them a lot, so the two settings' sizes differ for sure.
    state = {"w": jnp.tile(jnp.arange(512, dtype=jnp.float32), (512, 1)), "b": {"c": jnp.ones((8,), jnp.bfloat16)}}
    sizes = {}
    for compression in (False, True):
        d = tmp_path / f"compression-{compression}"
        ckpt = checkpoint.Checkpointer(d, async_save=False, compression=compression)
        ckpt.save(1, state, None, {"step": 1})
        ckpt.close()
        sizes[compression] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert sizes[True] < 0.5 * sizes[False], sizes
    # A run written before the choice existed (orbax's StandardSave, compressed) resumes too.
    manager = ocp.CheckpointManager(tmp_path / "standard", item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": 1})))
    manager.wait_until_finished()
    manager.close()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = checkpoint.abstract_like(state, jax.tree.map(lambda _: sharding, state))
    for written in (False, True, "standard"):
        for reading in (False, True):  # the setting does not change what a restore reads
            d = tmp_path / (written if written == "standard" else f"compression-{written}")
            ckpt = checkpoint.Checkpointer(d, compression=reading)
            step, restored, meta = ckpt.restore(abstract)
            ckpt.close()
            assert step == 1 and meta == {"step": 1} and restored["b"]["c"].dtype == jnp.bfloat16
            np.testing.assert_array_equal(restored["w"], state["w"])


def test_stale_temporary_siblings_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "model"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".model.tmp-{_host()}-{dead.pid}-abc"
    live = tmp_path / f".model.tmp-{_host()}-{os.getppid()}-def"  # a live writer's: kept
    other_host = tmp_path / f".model.tmp-otherhost-{dead.pid}-ghi"  # another host's, on a shared disk: kept
    for d in (stale, live, other_host):
        d.mkdir()
        (d / "part.safetensors").write_bytes(b"x" * 100)
    assert remove_stale_siblings(out) == [stale]
    assert live.exists() and other_host.exists()


def test_output_dirs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_background_reports_are_held_then_dropped_on_failure_or_printed(capsys, monkeypatch):
    import importlib

    from solar_jax import background_errors as held

    held = importlib.reload(held)  # fresh module state; install() (the global hooks) is not called
    monkeypatch.setattr(held, "HOLD_SECONDS", 0.2)
    held.hold("ERROR:absl:write failed\n  at the checkpoint")
    held.hold("ERROR:absl:write failed  at the checkpoint")  # the same report again
    assert capsys.readouterr().err == ""  # held, not printed
    deadline = time.monotonic() + 10
    while "write failed" not in (err := capsys.readouterr().err) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert err == "ERROR:absl:write failed at the checkpoint\n"  # printed when it is old enough, once
    held.hold("ERROR:absl:another")
    held.flush()  # what runs at exit when the command ends well
    assert capsys.readouterr().err == "ERROR:absl:another\n"
    held.hold("ERROR:absl:the failure")
    held.drop()  # the command failed with its own line
    held.hold("error (background): the failure again, while winding down")
    held.flush()
    assert capsys.readouterr().err == ""


# ---- one writer per workdir and per output dir --------------------------------------------------

def _try_lock(lock, what="workdir", target="w"):
    """Another process taking the lock (it fails with the Busy line, or exits 0)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from solar_jax.weights import locks
        with locks.hold({str(lock)!r}, {what!r}, {str(target)!r}):
            pass""")], cwd=REPO, capture_output=True, text=True)


def test_a_held_lock_refuses_a_second_holder_naming_the_first_and_a_killed_holder_leaves_none(tmp_path):
    from solar_jax.weights import locks

    lock = tmp_path / "run" / locks.WORKDIR_LOCK
    with locks.hold(lock, "workdir", tmp_path / "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with locks.hold(lock, "workdir", tmp_path / "run"):  # re-entrant in the holding process
            pass
        assert lock.exists()
        other = _try_lock(lock)
        assert re.search(rf"Busy: workdir w is in use by pid {os.getpid()} on host \S+ since "
                         r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC \(", other.stderr), other.stderr
    assert not lock.exists()  # released: removed
    # A holder SIGKILLed mid-run leaves its lock file, which binds nobody.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from solar_jax.weights import locks
        with locks.hold({str(lock)!r}, "workdir", "w"):
            print("held", flush=True)
            time.sleep(600)""")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert locks.held_by_another(lock)["pid"] == holder.pid
    with pytest.raises(locks.Busy, match=f"workdir w is in use by pid {holder.pid}"):
        with locks.hold(lock, "workdir", "w"):
            pass
    holder.kill()
    holder.wait()
    assert lock.exists() and locks.held_by_another(lock) is None
    with locks.hold(lock, "workdir", "w"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_an_output_dir_being_written_is_refused_to_a_second_writer(tmp_path):
    from solar_jax.weights import locks
    from solar_jax.weights.outdir import check_output_dir

    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert check_output_dir(out, False) == out  # the writer itself may check it again
        lock = locks.sibling_lock(out)
        other = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from solar_jax.weights.outdir import check_output_dir
            check_output_dir({str(out)!r}, True)""")], cwd=REPO, capture_output=True, text=True)
        assert other.returncode == 1 and f"output_dir {out} is being written by pid {os.getpid()}" in other.stderr
        assert f"Busy: output_dir {out} is in use by pid {os.getpid()}" in _try_lock(lock, "output_dir", out).stderr
    assert (out / "a").read_text() == "1" and not os.path.exists(lock)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
