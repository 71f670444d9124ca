"""The training engine on the tiny config: loss, sharding, resume, preemption, packing."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.host_malloc import hugepage_malloc_env
from solar_jax.weights import hf
from solar_jax.models import transformer as model_lib
from solar_jax.inference.log_probs import token_log_probs
from solar_jax.training.metrics import read_metrics
from solar_jax.errors import SolarError
from solar_jax.training.loop import train_and_evaluate
from solar_jax.training.run_config import validate
from tests.conftest import REPO, checkpoint_saved, kill_once, load_config, override, run_command, run_main
from tests.test_hf_io import hf_tensors


def tiny(**overrides):
    c = load_config("cpt.py", "tiny")
    c.upscale_m = -1
    c.export.enabled = True
    return override(c, **overrides)


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r.get("loss") is not None}


def test_step_zero_loss_is_the_models_cross_entropy(tmp_path):
    c = tiny(num_steps=1, eval_every=1, checkpoint_every=1)
    result = train_and_evaluate(c, tmp_path / "run", devices=jax.devices()[:1])
    # The first batch, rebuilt independently, scored by the initial model in numpy.
    corpus = pretrain_lib.load_corpus(c.data, tokenizer_lib.ByteTokenizer(), c.seed)
    batch = pretrain_lib.model_batch(next(iter(pretrain_lib.train_dataset(corpus.train, c.seq_len, c.batch_size, c.seed))))
    from flax import nnx

    from solar_jax.models.config import preset

    model = model_lib.Transformer(preset("tiny"), rngs=nnx.Rngs(c.seed))
    logits = np.asarray(model(jnp.asarray(batch["inputs"]), None, jnp.asarray(batch["segment_ids"])), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    expected = (nll * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
    assert losses(tmp_path / "run")[1] == pytest.approx(expected, rel=1e-5)
    # What a run leaves behind.
    for name in ("metrics.jsonl", "loss_curve.png", "run.json", "hf/config.json", "hf/model.safetensors"):
        assert (tmp_path / "run" / name).exists(), name
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert {"step", "loss", "tokens_per_second", "eval_loss"} <= set(row)
    assert result["status"] == "completed"


def test_training_lowers_the_loss_on_a_repeated_batch():
    from solar_jax.training.step import make_train_step
    from solar_jax.training.optim import make_optimizer
    from solar_jax.models.config import preset
    from flax import nnx

    c = tiny(learning_rate=1e-2, warmup_steps=0, schedule="constant")
    model = model_lib.Transformer(preset("tiny"), rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(model)
    params = model_lib.param_dict(model)
    tx = make_optimizer(c, params)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = dict(inputs=jnp.asarray(rng.integers(1, 256, (4, 32)), jnp.int32),
                 targets=jnp.asarray(rng.integers(1, 256, (4, 32)), jnp.int32),
                 segment_ids=jnp.ones((4, 32), jnp.int32), loss_mask=jnp.ones((4, 32), jnp.float32))
    step = jax.jit(make_train_step(graphdef, tx, 1))
    first = None
    for _ in range(3):
        state, m = step(state, batch)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < first - 0.1
    # Gradient accumulation gives the same update as the whole batch (SGD: the update is
    # linear in the gradient; Adam's first step ~ sign(g) would magnify rounding).
    import optax

    sgd = optax.sgd(0.5)
    state2 = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=sgd.init(params), rng=jax.random.PRNGKey(0))
    a, ma = jax.jit(make_train_step(graphdef, sgd, 1))(dict(state2), batch)
    b, mb = jax.jit(make_train_step(graphdef, sgd, 2))(dict(state2), batch)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8, tensor=1), dict(data=1, fsdp=4, tensor=2)])
def test_sharded_equals_unsharded(tmp_path, mesh):
    assert jax.device_count() == 8
    one = train_and_evaluate(tiny(num_steps=3, eval_every=3, checkpoint_every=3), tmp_path / "one",
                             devices=jax.devices()[:1])
    c = tiny(num_steps=3, eval_every=3, checkpoint_every=3)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    eight = train_and_evaluate(c, tmp_path / "eight")
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == [1, 2, 3]
    np.testing.assert_allclose([a[s] for s in (1, 2, 3)], [b[s] for s in (1, 2, 3)], rtol=1e-5)
    assert one["eval_loss"] == pytest.approx(eight["eval_loss"], rel=1e-5)
    # Params: Adam's early updates ~ lr * sign(g) amplify reduction-order rounding for the
    # rare elements whose gradient is ~0, so: nearly all agree to 1e-6, none beyond lr.
    x, y = hf_tensors(tmp_path / "one" / "hf"), hf_tensors(tmp_path / "eight" / "hf")
    for k in x:
        diff = np.abs(x[k] - y[k])
        assert diff.max() < c.learning_rate and np.mean(diff > 1e-6) < 1e-3, k


def _train_cmd(workdir, *extra):
    return ["solar_jax.train", "--config=configs/cpt.py:tiny", f"--config.workdir={workdir}", "--config.upscale_m=-1",
            *extra]


def test_exact_resume_after_sigkill(tmp_path):
    flags = ["--config.num_steps=20", "--config.checkpoint_every=1", "--config.eval_every=100"]
    # Started as a user starts it, without the suite's GLIBC_TUNABLES: the command re-executes
    # itself (same pid) under the huge-page malloc tunable where it helps.
    straight = run_command(*_train_cmd(tmp_path / "straight", *flags), without_env=("GLIBC_TUNABLES",))
    assert straight.returncode == 0, straight.stderr
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    tunables = (hugepage_malloc_env(env) or env).get("GLIBC_TUNABLES", "")
    assert f"GLIBC_TUNABLES={tunables!r}" in straight.stdout
    assert "\n  batch_size: 8\n" in straight.stdout and "!!python" not in straight.stdout  # plain YAML config
    # SIGKILL from outside once step 2 is on disk; a run that finished first is tried again.
    for attempt in range(3):
        workdir = tmp_path / f"resumed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", *_train_cmd(workdir, *flags)], cwd=REPO,
                                env=dict(os.environ, XLA_FLAGS=""), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if kill_once([proc], checkpoint_saved(workdir, 2)):
            break
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "hf").exists()
    resumed = run_command(*_train_cmd(workdir, *flags))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = losses(tmp_path / "straight"), losses(workdir)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert [a[s] for s in a] == [b[s] for s in a]  # bitwise: same topology, same order
    x, y = hf_tensors(tmp_path / "straight" / "hf"), hf_tensors(workdir / "hf")
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, capsys):
    workdir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", *_train_cmd(workdir, "--config.num_steps=100000",
                                                               "--config.checkpoint_every=100000")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = workdir / "metrics.jsonl"
        if metrics.exists() and max((r["step"] for r in read_metrics(metrics)), default=0) >= 3:
            break
        time.sleep(0.2)
    # A second run on the same workdir (a double launch) is refused, naming the live holder.
    second = run_command(*_train_cmd(workdir, "--config.num_steps=100000"))
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-2000:]
    assert f"error: workdir {workdir} is in use by pid {proc.pid} on host " in second.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM: saved a checkpoint at step" in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 3
    # The resumes in this process (the command's exit-2 line for a refused resume: above).
    capsys.readouterr()
    train_and_evaluate(tiny(num_steps=saved[-1] + 2), workdir)
    resumed = capsys.readouterr().out
    assert "resumed from" in resumed and f"at step {saved[-1]}" in resumed
    assert max(losses(workdir)) == saved[-1] + 2
    # Resuming with other batches is refused; a change named in resume_changes is accepted and
    # recorded in run.json.
    with pytest.raises(SolarError) as refused:
        train_and_evaluate(tiny(num_steps=saved[-1] + 3, seq_len=32), workdir)
    assert str(refused.value) == (
        f"resuming {workdir} with a changed seq_len 64 -> 32: start another workdir, or accept the change "
        "with --config.resume_changes=seq_len (recorded in run.json)")
    train_and_evaluate(tiny(num_steps=saved[-1] + 3, seed=7, resume_changes="seed"), workdir)
    assert "resuming with accepted changes: seed 0 -> 7" in capsys.readouterr().out
    record = json.loads((workdir / "run.json").read_text())
    assert record["config"]["seed"] == 7 and record["resume_changes"][0]["changed"] == {"seed": [0, 7]}
    assert record["resume_changes"][0]["at_step"] == saved[-1] + 2


def test_packed_batch_gives_the_per_document_losses(tiny_hf):
    _, path = tiny_hf("mistral_window")
    model = hf.load_hf(path)
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 128, n).astype(np.int32) for n in (9, 14, 6, 4)]  # 8+13+5+3 inputs: one row of 32
    batch = pretrain_lib.model_batch(pretrain_lib.eval_batches(docs, 32, 2, 0)[0])
    assert list(np.unique(batch["segment_ids"][0])) == [0, 1, 2, 3, 4]
    logp = np.asarray(token_log_probs(model(jnp.asarray(batch["inputs"]), None, jnp.asarray(batch["segment_ids"])),
                                      jnp.asarray(batch["targets"])))
    for seg, doc in enumerate(docs, start=1):
        in_row = batch["segment_ids"][0] == seg
        packed = (logp[0] * batch["loss_mask"][0])[in_row].sum()
        alone = np.asarray(token_log_probs(model(jnp.asarray(doc[None, :-1])), jnp.asarray(doc[None, 1:])))[0].sum()
        np.testing.assert_allclose(packed, alone, rtol=1e-5)
    assert batch["loss_mask"][0][batch["segment_ids"][0] == 0].sum() == 0  # padding is not scored


def test_every_config_file_builds_and_validates():
    import importlib.util

    from solar_jax.pipelines.recipe import stage_config
    from solar_jax.training.run_config import validate

    for path in sorted((REPO / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant in getattr(module, "VARIANTS", getattr(module, "BENCHMARKS", (None,))):
            c = module.get_config(variant)
            assert c is not None
            if getattr(c, "section", "") == "merge_gain":  # the candidates' runs
                from solar_jax.pipelines.merge_gain import dpo_config, sft_configs

                runs = list(sft_configs(c, "BASE", REPO / "unused", ("train.jsonl", "heldout.jsonl")).values())
                for run in runs + ([dpo_config(c, "A", REPO / "unused")] if c.dpo_a.num_steps > 0 else []):
                    validate(run, num_devices=1)
            elif path.stem in ("recipe", "reproduce"):  # each training stage is a run config
                stages = [("cpt.py", c.cpt)] + ([("sft.py", c.sft), ("dpo.py", c.dpo_a), ("dpo.py", c.dpo_b)]
                                                if path.stem == "recipe" else [])
                for file, overrides in stages:
                    validate(stage_config(file, overrides), num_devices=1)
            elif hasattr(module, "VARIANTS"):
                validate(c, num_devices=1)


# ---- bad input ---------------------------------------------------------------------------------

# Validation runs in this process (a command's one-line exit-2 edge is test_layout's, once
# per command): the error names the problem, before anything compiles, and leaves no workdir.
@pytest.mark.parametrize("values, match", [
    ({"seq_len": 1024}, "max_position_embeddings=512"),
    ({"data.train_files": "/nonexistent/*.jsonl"}, "does not exist"),
    ({"dtype": "float8"}, "unknown dtype"),
    ({"upscale_m": 9}, "0 <= m < n"),
    ({"scan_unroll": 0}, "scan_unroll must be positive, got 0"),
    ({"logits_dtype": "bfloat16"}, "unknown logits_dtype 'bfloat16'; known: float32, compute"),
])
def test_config_errors_before_compiling(tmp_path, capsys, values, match):
    with pytest.raises(SolarError, match=re.escape(match)):
        train_and_evaluate(tiny(**values), tmp_path / "run")
    assert "compiled" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_a_run_without_checkpoints_exports_and_leaves_no_step(tmp_path):
    # checkpoint_every=0: the pipelines' stage runs (their next stage reads the HF export)
    result = train_and_evaluate(tiny(num_steps=2, checkpoint_every=0), tmp_path / "run")
    assert result["status"] == "completed" and result["step"] == 2
    assert (tmp_path / "run" / "hf" / "config.json").exists()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    with pytest.raises(SolarError, match="checkpoint_every must be positive, or 0 for no checkpoints; got -1"):
        validate(tiny(checkpoint_every=-1), num_devices=1)


def test_batch_not_divisible_by_data_parallel_size():
    with pytest.raises(SolarError, match="data-parallel size 4"):
        validate(tiny(batch_size=6), num_devices=4)


def test_empty_dataset(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(SolarError, match="training data is empty"):
        train_and_evaluate(tiny(**{"data.train_files": str(empty)}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_corrupt_latest_checkpoint_falls_back_and_says_so(tmp_path, capsys):
    workdir = tmp_path / "run"
    train_and_evaluate(tiny(num_steps=4, checkpoint_every=2), workdir)
    latest = workdir / "checkpoints" / "4"
    for f in (latest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 8)
    capsys.readouterr()
    train_and_evaluate(tiny(num_steps=6, checkpoint_every=2), workdir)
    out = capsys.readouterr().out
    assert "checkpoint at step 4" in out and "unreadable" in out
    assert "resumed from" in out and "at step 2" in out


def test_export_command_and_merging_training_runs(tmp_path):
    # The runs, the exports and the merges in this process (the commands' mains); the export
    # command once as a user runs it.
    runs = []
    for seed in (0, 1):
        workdir = tmp_path / f"run{seed}"
        train_and_evaluate(tiny(num_steps=2, checkpoint_every=1, seed=seed, **{"export.enabled": False}), workdir)
        runs.append(workdir)
    out = tmp_path / "exported"
    r = run_command("solar_jax.export", f"--config.workdir={runs[0]}", f"--config.output_dir={out}", "--config.step=1")
    assert r.returncode == 0, r.stderr
    assert "from step 1" in r.stdout
    import transformers

    assert transformers.AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 4
    with pytest.raises(SolarError, match="no checkpoint at step 7"):
        run_main("export", workdir=str(runs[0]), output_dir=str(tmp_path / "x"), step=7)
    # Merge two runs' checkpoints directly, and the same runs through their HF exports: equal.
    for i, run in enumerate(runs):
        run_main("export", workdir=str(run), output_dir=str(tmp_path / f"hf{i}"))
    direct, via_hf = tmp_path / "m-direct", tmp_path / "m-hf"
    for models, target in ((f"{runs[0]},{runs[1]}", direct), (f"{tmp_path / 'hf0'},{tmp_path / 'hf1'}", via_hf)):
        run_main("merge", method="slerp", model_dir=models, t="0.3", output_dir=str(target))
    x, y = hf_tensors(direct), hf_tensors(via_hf)
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    r = run_command(*_train_cmd(workdir, "--config.learning_rate=1e12", "--config.warmup_steps=0",
                                "--config.grad_clip=0", "--config.checkpoint_every=1", "--config.num_steps=30"))
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: loss is nan at step") or line.startswith("error: loss is inf at step")
    bad_step = int(line.split("at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) == bad_step - 1 and f"last good checkpoint: step {bad_step - 1}" in line
    assert not (workdir / "hf").exists()
