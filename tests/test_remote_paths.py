"""gs:// everywhere a run reads or writes, against a real GCS API on localhost (the PyPI
package gcp-storage-emulator, started and stopped here, loopback only): the model dir, the
data glob, the workdir (metrics, run.json, TensorBoard), the checkpoints and the export."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, kill_once
from solar_jax.errors import SolarError
from tests.test_hf_io import hf_tensors

BUCKET = "solar-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(env for subprocesses, an fsspec filesystem) with an emulator serving gs://solar-test."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # gcp-storage-emulator with GCS's generation preconditions and headers (tests/gcs_emulator.py)
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host=127.0.0.1",
                             f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the GCS emulator did not start")
            time.sleep(0.1)
    # gcsfs and etils read the emulator from STORAGE_EMULATOR_HOST; tensorstore (orbax's
    # checkpoints) from its own two variables.
    env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", SOLAR_JAX_CACHE=str(tmp_path_factory.mktemp("cache")))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("gs", token="anon", skip_instance_cache=True)
    try:
        yield dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1"), fs
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


def _train(env, *flags, timeout=300, background=False):
    args = [sys.executable, "-m", "solar_jax.train", *flags]
    if background:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _corpus(folder: Path) -> Path:
    from pydoc_data.topics import topics

    import json

    folder.mkdir()
    names = sorted(topics)
    for k in range(3):
        rows = [json.dumps({"text": topics[n]}) for n in names[k::3][:20]]
        (folder / f"part-{k}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_train_reads_and_writes_gs_and_resumes_after_sigkill(gcs, tmp_path):
    env, fs = gcs
    # A base model to start from: a tiny run's export (byte tokenizer).
    r = _train(env, "--config=configs/cpt.py:tiny", "--config.upscale_m=-1", "--config.num_steps=1",
               f"--config.workdir={tmp_path / 'seed'}")
    assert r.returncode == 0, r.stderr[-2000:]
    base, corpus = tmp_path / "seed" / "hf", _corpus(tmp_path / "corpus")
    fs.put(str(base), f"{BUCKET}/model", recursive=True)
    fs.put(str(corpus), f"{BUCKET}/corpus", recursive=True)
    common = ["--config=configs/cpt.py:tiny", "--config.model_preset=", "--config.tokenizer=bytes",
              "--config.upscale_m=-1", "--config.num_steps=8", "--config.checkpoint_every=2",
              "--config.eval_every=4", "--config.async_checkpoint=False"]
    straight = _train(env, *common, f"--config.model_dir={base}", f"--config.data.train_files={corpus}/*.jsonl",
                      f"--config.workdir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    remote = [f"--config.model_dir=gs://{BUCKET}/model", f"--config.data.train_files=gs://{BUCKET}/corpus/*.jsonl",
              f"--config.workdir=gs://{BUCKET}/runs/cpt"]
    proc = _train(env, *common, *remote, background=True)
    metrics = f"{BUCKET}/runs/cpt/metrics.jsonl"

    def pushed_step_4():  # the mirror is pushed after each checkpoint: step 4's is on its way
        fs.invalidate_cache()
        return fs.exists(metrics) and '"step": 4' in fs.cat(metrics).decode()

    assert kill_once([proc], pushed_step_4, timeout=240), \
        f"the run finished before it could be killed: {proc.returncode}, {proc.stderr.read()[-3000:]}"
    resumed = _train(env, *common, *remote)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from gs://{BUCKET}/runs/cpt/checkpoints at step" in resumed.stdout
    # The killed run's lock record (a dead process of this host) does not block the resume.
    assert f"workdir gs://{BUCKET}/runs/cpt: taking over the lock of pid {proc.pid}" in resumed.stdout
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/runs/cpt")}
    assert {"metrics.jsonl", "run.json", "tensorboard", "hf", "checkpoints", "loss_curve.png"} <= names
    assert fs.ls(f"{BUCKET}/runs/cpt/tensorboard")
    # The export, read back from gs://, equals the uninterrupted local run's.
    fs.get(f"{BUCKET}/runs/cpt/hf", str(tmp_path / "from_gs"), recursive=True)
    got, expected = hf_tensors(tmp_path / "from_gs"), hf_tensors(tmp_path / "straight" / "hf")
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    from solar_jax.training.metrics import read_metrics

    rows = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    remote_rows = [__import__("json").loads(l) for l in fs.cat(metrics).decode().splitlines()]
    last = {r["step"]: r for r in remote_rows}
    assert [r["step"] for r in rows] == sorted(last)
    assert last[8]["loss"] == pytest.approx(rows[-1]["loss"], abs=0)


def test_a_gs_lock_is_created_once_beats_and_a_stale_one_is_taken_over(gcs, monkeypatch, capsys):
    from solar_jax.weights import locks

    _, fs = gcs
    url = f"gs://{BUCKET}/locked/{locks.WORKDIR_LOCK}"
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.2)
    with locks.hold(url, "workdir", "w"):
        first = json.loads(fs.cat(url))
        with pytest.raises(locks.Busy, match=f"workdir w is in use by pid {os.getpid()}"):
            with locks._hold_remote(url, "workdir", "w"):  # a second holder (hold is re-entrant)
                pass
        time.sleep(1.0)
        fs.invalidate_cache()
        assert json.loads(fs.cat(url))["heartbeat"] > first["heartbeat"]  # the holder is alive
    fs.invalidate_cache()
    assert not fs.exists(url)
    # Another host's record: live while it beats, taken over once STALE_S has passed.
    record = dict(host="elsewhere", pid=1, since=time.time(), heartbeat=time.time(), token="x", command="train")
    fs.pipe(url, json.dumps(record).encode())
    with pytest.raises(locks.Busy, match="pid 1 on host elsewhere"):
        with locks.hold(url, "workdir", "w"):
            pass
    fs.pipe(url, json.dumps(dict(record, heartbeat=time.time() - locks.STALE_S - 1)).encode())
    with locks.hold(url, "workdir", "w"):
        assert json.loads(fs.cat(url))["pid"] == os.getpid()
    assert "taking over the lock of pid 1 on host elsewhere" in capsys.readouterr().out


@pytest.mark.parametrize("flag, match", [
    (f"--config.data.train_files=gs://{BUCKET}/nothing/*.jsonl", "does not exist"),
    (f"--config.data.train_files=gs://{BUCKET}/missing.jsonl", "does not exist"),
    (f"--config.model_dir=gs://{BUCKET}/no-model", f"gs://{BUCKET}/no-model"),
])
def test_missing_remote_inputs_are_one_line(gcs, flag, match, tmp_path):
    env, _ = gcs
    model = ["--config.model_preset=", "--config.tokenizer=bytes"] if "model_dir" in flag else []
    r = _train(env, "--config=configs/cpt.py:tiny", "--config.upscale_m=-1", "--config.num_steps=1", *model, flag,
               f"--config.workdir={tmp_path / 'w'}", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0] and "Traceback" not in r.stderr, r.stderr


def _command(env, module, *flags, timeout=180):
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_commands_read_and_write_gs(gcs, tiny_hf, tmp_path):
    env, fs = gcs
    _, local = tiny_hf("llama_gqa")  # 3 layers
    fs.put(str(local), f"{BUCKET}/cmd/llama", recursive=True)
    src = f"gs://{BUCKET}/cmd/llama"
    r = _command(env, "solar_jax.convert", f"--config.model_dir={src}", f"--config.output_dir=gs://{BUCKET}/cmd/conv")
    assert r.returncode == 0 and f"gs://{BUCKET}/cmd/conv" in r.stdout, r.stderr[-2000:]
    merge = ["--config.method=slerp", f"--config.model_dir={src},gs://{BUCKET}/cmd/conv",
             f"--config.output_dir=gs://{BUCKET}/cmd/merged"]
    r = _command(env, "solar_jax.merge", *merge)
    assert r.returncode == 0 and f"wrote gs://{BUCKET}/cmd/merged" in r.stdout, r.stderr[-2000:]
    r = _command(env, "solar_jax.upscale", f"--config.model_dir=gs://{BUCKET}/cmd/merged", "--config.slices=0:2,0:3",
                 f"--config.output_dir=gs://{BUCKET}/cmd/up")
    assert r.returncode == 0, r.stderr[-2000:]
    # A non-empty gs:// output is refused in one line, and replaced with overwrite.
    r = _command(env, "solar_jax.merge", *merge)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: output_dir gs://{BUCKET}/cmd/merged is not empty (pass --config.overwrite=True to replace it)"]
    r = _command(env, "solar_jax.merge", *merge, "--config.overwrite=True")
    assert r.returncode == 0, r.stderr[-2000:]
    fs.invalidate_cache()
    expected = hf_tensors(local)
    for name in ("conv", "merged"):  # SLERP of a model with its own copy is the model
        fs.get(f"{BUCKET}/cmd/{name}", str(tmp_path / name), recursive=True)
        got = hf_tensors(tmp_path / name)
        assert got.keys() == expected.keys()
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6, err_msg=f"{name}: {k}")
    fs.get(f"{BUCKET}/cmd/up", str(tmp_path / "up"), recursive=True)
    up = hf_tensors(tmp_path / "up")
    layer = next(k for k in expected if k.startswith("model.layers.0."))
    np.testing.assert_array_equal(up[layer.replace("layers.0.", "layers.2.")], expected[layer])
    assert not list((Path(env["SOLAR_JAX_CACHE"]) / "staging").iterdir())  # staging dirs are cleaned up


def test_tokenize_to_gs_and_train_from_the_gs_shard_dir(gcs, tmp_path):
    env, fs = gcs
    corpus = _corpus(tmp_path / "corpus")
    fs.put(str(corpus), f"{BUCKET}/tok-corpus", recursive=True)
    shards = f"gs://{BUCKET}/tokens/bytes"
    r = _command(env, "solar_jax.tokenize", "--config=configs/tokenize.py", "--config.tokenizer=bytes",
                 f"--config.data_files=gs://{BUCKET}/tok-corpus/*.jsonl", f"--config.output_dir={shards}",
                 "--config.documents_per_shard=25", "--config.num_workers=1")
    assert r.returncode == 0 and f"wrote {shards}" in r.stdout, r.stderr[-2000:]
    assert any(p.endswith(".array_record") for p in fs.ls(shards.removeprefix("gs://")))
    r = _train(env, "--config=configs/cpt.py:tiny", "--config.upscale_m=-1", "--config.num_steps=2",
               f"--config.data.train_files={shards}", f"--config.workdir={tmp_path / 'w'}", timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    # The remote shard dir is copied to each host; the run says so and how to read in place.
    assert f"copying the token shards {shards} to this host" in r.stdout and "--gcsfuse=" in r.stdout


def test_a_pipeline_output_dir_on_gs_is_staged_and_published(gcs, tmp_path):
    # recipe, reproduce and merge_gain write their stages locally (each reads the others'
    # files as it goes) and upload the whole dir at the end.
    from solar_jax.pipelines.recipe import fresh_output_dir, output_file
    from solar_jax.weights.outdir import publish_output_dir

    _, fs = gcs
    url = f"gs://{BUCKET}/pipeline/out"
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"x" * 1000)
    out = fresh_output_dir(url, overwrite=False)
    assert out.is_dir() and not list(out.iterdir())
    (out / "base").symlink_to(model, target_is_directory=True)  # the recipe's link to its input model
    (out / "cpt").mkdir()
    (out / "cpt" / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "results.json").write_text(json.dumps({"final": str(out / "final")}))
    publish_output_dir(out, url)
    assert not out.exists()
    names = sorted(p.removeprefix(f"{BUCKET}/pipeline/out/") for p in fs.find(f"{BUCKET}/pipeline/out"))
    assert names == ["cpt/metrics.jsonl", "results.json"]  # the linked input model is not uploaded
    assert json.loads(fs.cat(f"{BUCKET}/pipeline/out/results.json")) == {"final": f"{url}/final"}
    assert output_file(url, out, "results.md") == f"{url}/results.md"
    # A non-empty gs:// output_dir is refused in one line, as for every command.
    with pytest.raises(SolarError, match="is not empty"):
        fresh_output_dir(url, overwrite=False)
    again = fresh_output_dir(url, overwrite=True)
    publish_output_dir(again, url)
    assert not fs.find(f"{BUCKET}/pipeline/out")


def test_reproduce_reads_a_recipe_dir_on_gs(gcs, tmp_path):
    from solar_jax.pipelines.reproduce import recipe_candidates

    _, fs = gcs
    for name in ("dpo_a", "dpo_b"):
        hf_dir = tmp_path / "recipe" / name / "hf"
        hf_dir.mkdir(parents=True)
        (hf_dir / "config.json").write_text(json.dumps({"name": name}))
    (tmp_path / "recipe" / "cpt").mkdir()
    (tmp_path / "recipe" / "cpt" / "big.bin").write_bytes(b"0" * 4096)  # not read by reproduce
    fs.put(str(tmp_path / "recipe"), f"{BUCKET}/recipe", recursive=True)
    got = recipe_candidates(f"gs://{BUCKET}/recipe")
    assert [json.loads((Path(d) / "config.json").read_text())["name"] for d in got] == ["dpo_a", "dpo_b"]
    assert recipe_candidates(str(tmp_path / "recipe")) == [str(tmp_path / "recipe" / n / "hf") for n in ("dpo_a", "dpo_b")]
    with pytest.raises(SolarError, match="has no dpo_a/hf and dpo_b/hf"):
        recipe_candidates(f"gs://{BUCKET}/no-recipe")
