"""The README runs as written: every `python -m solar_jax.X` line it shows names a command,
a config file and variant that load, and keys that exist; the cheap ones (the Python API on
the real model, convert, upscale, merge, the tiny training run, the planner, the launcher's
dry runs) are run, with the placeholders replaced by real paths."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMMAND_MODULES, REPO, run_command
from solar_jax.config_files import load_config

README = (REPO / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _command_lines() -> list[str]:
    """Every shell line of the README's bash blocks, continuations joined, comments and
    [optional] groups removed."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\[[^\]]*\]", "", line).strip()  # [--config.dtype=...] and configs/recipe.py[:quick]
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


SOLAR_LINES = [l for l in _command_lines() if l.startswith("python -m solar_jax.")]


def _default_config_file(command: str) -> str:
    source = (REPO / "solar_jax" / f"{command.replace('.', '/')}.py")
    source = source if source.exists() else REPO / "solar_jax" / command / "__main__.py"
    return re.search(r'cli\.run\(main, "([\w.]+)"', source.read_text()).group(1)


def test_the_readme_shows_every_command():
    shown = {l.split()[2].split(".", 1)[1] for l in SOLAR_LINES}
    commands = set(COMMAND_MODULES)
    assert commands - {"contamination", "evaluate"} <= shown, commands - shown  # those two are in prose
    assert len(SOLAR_LINES) > 30


@pytest.mark.parametrize("line", SOLAR_LINES, ids=lambda l: " ".join(l.split()[2:4])[:60])
def test_every_documented_config_key_exists(line):
    words = shlex.split(line)
    command = words[2].removeprefix("solar_jax.")
    if command == "lm_eval":  # lm-eval's own flags (test_evaluate runs it)
        return
    config_file, variant = _default_config_file(command), None
    for w in words[3:]:
        if w.startswith("--config="):
            spec = w.split("=", 1)[1]
            config_file, _, variant = Path(spec).name.partition(":")
            variant = variant or None
    config = load_config(config_file, variant)
    for w in words[3:]:
        if w.startswith("--config.") and "=" in w:
            node = config
            for part in w.split("=", 1)[0].removeprefix("--config.").split("."):
                assert part in node, f"{line}: {config_file}:{variant} has no key {part}"
                node = node[part]


def test_the_python_api_block_runs_on_the_real_model(real_model_dir, tmp_path):
    (block,) = [b for b in _blocks("python") if "import solar_jax as sj" in b]
    code = block.replace('"path/to/hf_dir"', repr(str(real_model_dir))).replace('"out_dir"', repr(str(tmp_path / "o")))
    # What the block takes as given: token ids, and two models to merge.
    code = code.replace("logits = model(input_ids)",
                        "import jax.numpy as jnp; input_ids = jnp.array([[1, 2, 3, 4]], jnp.int32); "
                        "prompt_ids = [1, 2, 3]; a = b = model\nlogits = model(input_ids)")
    code += "\nassert logits.shape == (1, 4, model.config.vocab_size) and len(tokens[0]) == 20\n" \
            "assert deeper.config.num_layers == 2 * (30 - 8) and merged.config == model.config\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    import transformers

    assert transformers.AutoConfig.from_pretrained(tmp_path / "o").torch_dtype is not None


def _run_line(line: str, **placeholders) -> subprocess.CompletedProcess:
    for name, value in placeholders.items():
        line = re.sub(rf"(?<=[=,]){name}(?=[,\s]|$)", str(value), line)
    words = shlex.split(line)
    return run_command(*words[2:], timeout=600)


def test_the_cheap_commands_run_as_written(real_model_dir, tmp_path):
    def line(prefix):
        (match,) = [l for l in SOLAR_LINES if l.startswith(prefix)]
        return match

    paths = dict(HF_DIR=real_model_dir, OUT=tmp_path / "convert")
    r = _run_line(line("python -m solar_jax.convert"), **paths)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run_line(line("python -m solar_jax.upscale"), HF_DIR=real_model_dir, OUT=tmp_path / "up")
    assert r.returncode == 0 and (tmp_path / "up" / "config.json").exists(), r.stderr[-2000:]
    r = _run_line(line("python -m solar_jax.merge --config.method=slerp --config.model_dir=A,B"),
                  A=real_model_dir, B=tmp_path / "convert", OUT=tmp_path / "merged")
    assert r.returncode == 0 and (tmp_path / "merged" / "config.json").exists(), r.stderr[-2000:]
    r = _run_line(line("python -m solar_jax.train --config=configs/cpt.py:tiny").replace("/tmp/t", str(tmp_path / "t")))
    assert r.returncode == 0 and "done: step" in r.stdout, r.stderr[-2000:]
    for plan in [l for l in SOLAR_LINES if l.startswith("python -m solar_jax.plan")]:
        # The 10.7B compiles (--compile, --search: minutes each) are the benchmark's
        # (bench.py:tpu); here the same config and slice through the fast planner. The compile
        # path itself runs on small models in test_tpu_compile.py.
        plan = " ".join(w for w in plan.split() if w not in ("--compile", "--search"))
        r = _run_line(plan)
        assert r.returncode == 0 and "per device" in r.stdout, (plan, r.stderr[-2000:])


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_hosts.sh"])
def test_the_launch_lines_parse_as_written(script):
    lines = [l for l in _command_lines() if l.startswith(f"bash launch/{script}")]
    assert lines
    for line in lines:
        words = shlex.split(line)
        split = words.index("--")
        r = subprocess.run(["bash", *words[1:split], "--dry_run", *words[split:]], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "solar_jax.train" in r.stdout, (line, r.stderr)
