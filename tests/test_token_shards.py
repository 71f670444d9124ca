"""Token shards (solar_jax.tokenize): written once, read by training exactly like the text."""

import json
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, kill_once, load_config, metrics_reached, override, run_command
from solar_jax.errors import SolarError
from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import text as text_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import token_shards
from solar_jax.training.metrics import read_metrics


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three .jsonl files of the built-in corpus (an empty document and a one-character one
    among them) and a .txt file."""
    root = tmp_path_factory.mktemp("corpus")
    docs = text_lib.builtin_documents("pydoc")[:90]
    docs[5], docs[40] = " ", "x"  # dropped by read_documents / kept but under 2 tokens without BOS+EOS
    for i in range(3):
        with open(root / f"part{i}.jsonl", "w") as f:
            for d in docs[30 * i:30 * (i + 1)]:
                f.write(json.dumps(dict(text=d)) + "\n")
    (root / "extra.txt").write_text("\n\n".join(docs[:7]))
    return root


def _tokenize(corpus, out, *extra):
    return run_command("solar_jax.tokenize", "--config=configs/tokenize.py", f"--config.data_files={corpus}/*.jsonl,"
                       f"{corpus}/extra.txt", f"--config.output_dir={out}", *extra)


def test_shards_hold_exactly_the_tokens_of_tokenizing_on_the_fly(corpus, real_model_dir, tmp_path):
    out = tmp_path / "tokens"
    r = _tokenize(corpus, out, f"--config.model_dir={real_model_dir}", "--config.documents_per_shard=16",
                  "--config.num_workers=2", "--config.add_eos=False")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    files = text_lib.expand_files(f"{corpus}/*.jsonl,{corpus}/extra.txt")
    docs = text_lib.read_documents(files)
    shards = -(-len(docs) // 16)
    assert manifest["documents"] == len(docs) and len(manifest["shards"]) == shards > 2
    assert manifest["dtype"] == "uint16" and manifest["add_eos"] is False
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{i:05d}-of-{shards:05d}.array_record"
                                                       for i in range(shards)]
    tokenizer = tokenizer_lib.load_tokenizer("", str(real_model_dir))
    expected = text_lib.tokenize_documents(docs, tokenizer, add_bos=True, add_eos=False)
    cfg = load_config("cpt.py").data
    override(cfg, train_files=str(out), add_eos=False)
    read = token_shards.all_documents(str(out), tokenizer, cfg)
    assert len(read) == len(expected) < len(docs)  # "x" is one token here: dropped, as on the fly
    assert all(np.array_equal(a, b) and a.dtype == np.int32 for a, b in zip(read, expected))
    assert manifest["tokens"] == sum(len(t) for t in expected) + len(docs) - len(expected)  # one token each
    assert f"{len(docs)} documents" in r.stdout and f"{shards} shards" in r.stdout


@pytest.fixture(scope="module")
def byte_shards(tmp_path_factory):
    """The built-in corpus tokenized as bytes (configs/cpt.py:tiny's tokenizer), one process."""
    out = tmp_path_factory.mktemp("shards") / "bytes"
    r = run_command("solar_jax.tokenize", "--config=configs/tokenize.py", "--config.tokenizer=bytes",
                    f"--config.output_dir={out}", "--config.documents_per_shard=500", "--config.num_workers=1")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_training_batches_from_shards_equal_those_from_text(byte_shards):
    c = load_config("cpt.py", "tiny")
    tokenizer = tokenizer_lib.load_tokenizer("bytes")
    text = pretrain_lib.load_corpus(c.data, tokenizer, c.seed)
    override(c, **{"data.train_files": str(byte_shards)})
    shards = pretrain_lib.load_corpus(c.data, tokenizer, c.seed)
    assert isinstance(shards.train, token_shards.ShardDocuments)
    assert len(shards.train) == len(text.train) and shards.train_tokens == text.train_tokens
    assert all(np.array_equal(a, b) for a, b in zip(shards.eval, text.eval)) and len(shards.eval) == len(text.eval)
    a = iter(pretrain_lib.train_dataset(text.train, 64, 4, c.seed))
    b = iter(pretrain_lib.train_dataset(shards.train, 64, 4, c.seed))
    for _ in range(30):
        x, y = next(a), next(b)
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_shards_of_another_tokenizer_or_settings_are_refused(byte_shards, real_model_dir):
    c = load_config("cpt.py", "tiny")
    override(c, **{"data.train_files": str(byte_shards)})
    with pytest.raises(SolarError, match="tokenized with another tokenizer"):
        pretrain_lib.load_corpus(c.data, tokenizer_lib.load_tokenizer("", str(real_model_dir)), c.seed)
    override(c, **{"data.add_bos": False, "data.add_eos": False})
    with pytest.raises(SolarError, match="tokenized with add_bos=True, add_eos=True but the run says add_bos=False"):
        pretrain_lib.load_corpus(c.data, tokenizer_lib.load_tokenizer("bytes"), c.seed)


def test_a_truncated_shard_is_one_line(byte_shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(byte_shards, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    r = run_command("solar_jax.train", "--config=configs/cpt.py:tiny", f"--config.workdir={tmp_path / 'run'}",
                    f"--config.data.train_files={copy}", "--config.num_steps=1")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {shard} is missing or not the size"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def _flip_bytes(path, start=64, every=97):
    data = bytearray(path.read_bytes())
    for i in range(start, len(data), every):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_one_line_at_start_and_names_its_file_mid_run(byte_shards, tmp_path):
    import os
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(byte_shards, copy)
    shards = [copy / s["file"] for s in json.loads((copy / "manifest.json").read_text())["shards"]]
    flags = ["solar_jax.train", "--config=configs/cpt.py:tiny", "--config.upscale_m=-1",
             f"--config.data.train_files={copy}"]
    # At start: the sha256 of every shard against the manifest (the size is unchanged).
    damaged = tmp_path / "damaged.array_record"
    shutil.copy(shards[0], damaged)
    _flip_bytes(damaged, start=len(damaged.read_bytes()) // 2, every=10**9)
    os.replace(damaged, shards[0])
    r = run_command(*flags, f"--config.workdir={tmp_path / 'a'}", "--config.num_steps=1")
    assert r.returncode == 2 and r.stderr == (f"error: {shards[0]} is damaged: its sha256 is not the manifest's; "
                                              "copy the shard dir again or re-run solar_jax.tokenize\n"), r.stderr
    assert not (tmp_path / "a").exists()
    # Damaged after the check (hours in): the read error names the shard and the last good
    # checkpoint, exit 2.
    shutil.rmtree(copy)
    shutil.copytree(byte_shards, copy)
    workdir = tmp_path / "b"
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", *flags, f"--config.workdir={workdir}", "--config.num_steps=10000",
                             "--config.checkpoint_every=2", "--config.async_checkpoint=False", "--config.eval_every=10000"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "2").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    for shard in shards:
        _flip_bytes(shard)
    _, err = proc.communicate(timeout=240)
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1, err[-3000:]  # besides it: the progress bar, cleared
    assert re.match(rf"error: cannot read document \d+ from {copy}/shard-0000\d-of-\d+\.array_record \(.+\); "
                    r"last good checkpoint: step \d+$", errors[0]), err


@pytest.mark.parametrize("args, message", [
    (["--config.data_files={missing}"], "error: data file {missing} does not exist"),
    (["--config.data_files={empty}"], "error: the text is empty: no document to tokenize"),
    (["--config.output_dir="], "error: output_dir is required"),
    (["--config.documents_per_shard=0"], "error: documents_per_shard must be positive, got 0"),
])
def test_bad_tokenize_input_is_one_line(tmp_path, args, message):
    empty, missing = tmp_path / "empty.txt", tmp_path / "nope.jsonl"
    empty.write_text("\n\n  \n")
    out = tmp_path / "out"
    fill = dict(empty=empty, missing=missing)
    r = run_command("solar_jax.tokenize", "--config=configs/tokenize.py", "--config.tokenizer=bytes",
                    f"--config.output_dir={out}", *[a.format(**fill) for a in args])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message.format(**fill)) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_training_on_shards_resumes_exactly_after_sigkill(byte_shards, tmp_path):
    flags = ["--config=configs/cpt.py:tiny", "--config.upscale_m=-1", "--config.num_steps=8",
             "--config.checkpoint_every=2", "--config.eval_every=100"]
    text = run_command("solar_jax.train", *flags, f"--config.workdir={tmp_path / 'text'}")
    assert text.returncode == 0, text.stderr[-2000:]
    flags.append(f"--config.data.train_files={byte_shards}")
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "text" / "metrics.jsonl") if r.get("loss")}
    workdir = tmp_path / "shards"
    env = dict(__import__("os").environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "solar_jax.train", *flags, f"--config.workdir={workdir}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = kill_once([proc], metrics_reached(workdir, random.Random(0).randint(3, 6)), timeout=300)
    r = run_command("solar_jax.train", *flags, f"--config.workdir={workdir}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout or not killed
    got = {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r.get("loss")}
    assert got == losses  # bitwise: the shards give the text's batches, before and after the kill


def test_a_process_reads_only_the_documents_of_its_rows(byte_shards, monkeypatch):
    c = load_config("cpt.py", "tiny")
    override(c, **{"data.train_files": str(byte_shards)})
    train = pretrain_lib.load_corpus(c.data, tokenizer_lib.load_tokenizer("bytes"), c.seed).train
    read = []
    original = token_shards.ShardDocuments.__getitem__
    monkeypatch.setattr(token_shards.ShardDocuments, "__getitem__", lambda self, i: read.append(i) or original(self, i))

    def batches(rows, n=12):
        it = pretrain_lib.RowStreams(train, 64, 8, rows, c.seed)
        out = [next(it) for _ in range(n)]
        return out, set(read)

    whole, all_read = batches(range(8))
    read.clear()
    half, half_read = batches([4, 5, 6, 7])  # the second of two hosts
    for a, b in zip(whole, half):
        assert all(np.array_equal(a[k][4:], b[k]) for k in a)
    assert len(half_read) <= 0.6 * len(all_read), (len(half_read), len(all_read))
    # Its checkpointed position only fits the same rows.
    it = pretrain_lib.RowStreams(train, 64, 8, [0, 1], c.seed)
    with pytest.raises(SolarError, match="resume on the same mesh and number of processes"):
        it.set_state(pretrain_lib.RowStreams(train, 64, 8, [4, 5], c.seed).get_state())
