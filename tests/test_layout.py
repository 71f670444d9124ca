"""The house: imports point one way (no module imports a higher layer, no cycles), the
public API holds whatever is imported, and every command runs without runpy's warning."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

import solar_jax as sj
from conftest import COMMAND_MODULES, REPO, run_command

PACKAGE = REPO / "solar_jax"
# Lowest first. A module may import its own layer and those below it.
LAYERS = ["errors", "config_files", "hardware", "models", "parallel", "weights", "surgery", "data", "inference",
          "training", "planning", "evaluation", "pipelines"]
# lm_eval is lm-eval's own command line (its flags, not a config: test_evaluate runs it).
COMMANDS = [c for c in COMMAND_MODULES if c != "lm_eval"]


def _layer(module: str) -> int:
    """solar_jax.X.Y -> rank of X; the command layer (cli, commands, bench) is on top."""
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def _imports() -> dict[str, tuple[set[str], set[str]]]:
    """module -> (solar_jax modules imported at the top, imported inside functions)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        top, inner = set(), set()

        def visit(node, in_function):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" if node.module == "solar_jax" else node.module for a in node.names]
            (inner if in_function else top).update(n for n in names if n.startswith("solar_jax."))
            nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, nested)

        visit(ast.parse(path.read_text()), False)  # module level includes `try: import ...` blocks
        out[module] = (top, inner)
    return out


def test_no_module_imports_a_higher_layer():
    wrong = [f"{m} -> {i}" for m, (top, inner) in _imports().items() for i in top | inner
             if m != "solar_jax" and _layer(i) > _layer(m)]
    assert not wrong, wrong


def test_library_imports_are_at_the_top_of_each_file():
    inner = [f"{m} -> {sorted(i)}" for m, (_, i) in _imports().items() if i]
    assert not inner, inner


def test_the_peers_benchmark_workers_never_load_solar_jax_or_jax():
    # Their time and memory must be the peer's own: peers.py runs as a script and imports
    # only the standard library, its sibling measure.py and the peer's libraries.
    imported = set()
    for path in (PACKAGE / "bench" / "peers.py", PACKAGE / "bench" / "measure.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"solar_jax", "jax", "flax", "optax", "ml_collections"}, imported


def test_no_import_cycles():
    modules = _imports()  # parsed once (it was parsed again per import edge: 3 minutes)
    graph = {m: {i for i in top | inner if i in modules} for m, (top, inner) in modules.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in graph.get(m, ()):
            visit(n, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_public_api_stays_itself_after_every_command_module_is_imported():
    expected = dict(load_hf=sj.load_hf, save_hf=sj.save_hf, generate=sj.generate, depth_up_scale=sj.depth_up_scale,
                    merge_models=sj.merge_models, ModelConfig=sj.ModelConfig, Transformer=sj.Transformer, SolarError=sj.SolarError)
    for name in COMMAND_MODULES:
        importlib.import_module(f"solar_jax.{name}")
    model = sj.Transformer(sj.ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                                          num_heads=2, num_kv_heads=1), rngs=__import__("flax").nnx.Rngs(0))
    for _ in range(2):
        for name, value in expected.items():
            assert getattr(sj, name) is value and not isinstance(value, type(sys)), name
        deeper = sj.depth_up_scale(model, m=1)
        assert deeper.config.num_layers == 2
        merged = sj.merge_models([model, model], method="linear")
        assert merged.config == model.config
        tokens = sj.generate(model, [[1, 2, 3]], max_new_tokens=2)
        assert len(tokens[0]) == 2


def test_the_old_function_name_merge_still_answers_with_a_deprecation_warning():
    # The package's own __getattr__, asked directly: in this process the command module
    # solar_jax.merge may already be bound onto the package under that name.
    with pytest.warns(DeprecationWarning, match="merge_models"):
        assert sj.__getattr__("merge") is sj.merge_models
    with pytest.raises(AttributeError):
        sj.__getattr__("no_such_name")


def test_a_runs_tensorboard_writer_does_not_import_torch(tmp_path):
    # tensorboardX imports torch wherever it is installed (seconds at every train start).
    code = ("import sys; from solar_jax.training.metrics import MetricsWriter; "
            f"w = MetricsWriter({str(tmp_path)!r}); w.write(1, {{'loss': 1.0}}); w.close(); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_importing_the_package_runs_nothing():
    # No re-exec, no flags, no jax backend started by `import solar_jax`.
    code = ("import os, sys; pid = os.getpid(); import solar_jax, jax; "
            "assert os.getpid() == pid; print(jax._src.xla_bridge._backends == {})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_starts_clean_and_refuses_an_unknown_key_in_one_line(command):
    r = run_command(f"solar_jax.{command}", "--config.no_such_key=1", timeout=120)
    assert "RuntimeWarning" not in r.stderr and "found in sys.modules" not in r.stderr, r.stderr
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "no_such_key" in r.stderr


def test_old_flag_names_name_the_new_ones(tmp_path):
    r = run_command("solar_jax.merge", "--config.models=a,b", f"--config.output_dir={tmp_path / 'o'}")
    assert r.returncode == 2 and r.stderr.strip() == "error: --config.models is now --config.model_dir"
    r = run_command("solar_jax.merge", "--yaml=x.yaml", f"--config.output_dir={tmp_path / 'o'}")
    assert r.returncode == 2 and "use --config.yaml=" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_command("solar_jax.recipe", "--config.out_dir=x")
    assert r.returncode == 2 and "--config.output_dir" in r.stderr


def test_a_run_on_a_host_without_tpu_chips_prints_no_libtpu_errors(tmp_path):
    # libtpu is installed (the test extra) and jax loads its plugin on every start; without
    # a chip it printed five lines of errors about the host (TPU_WORKER_HOSTNAMES, ...).
    # As a user starts it: the suite's JAX_PLATFORMS=cpu and quiet TF logging left out.
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")
           and not k.startswith("TPU_")}
    r = subprocess.run([sys.executable, "-m", "solar_jax.train", "--config=configs/cpt.py:tiny", "--config.num_steps=1",
                        f"--config.workdir={tmp_path / 'w'}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [l for l in r.stderr.splitlines() if "TPU" in l or "InitGoogle" in l], r.stderr[-2000:]


def test_only_the_sharding_rules_name_mesh_axes():
    # The model gets a Placement (models/placement.py) from parallel/sharding.py; no string
    # in the model, inference or data code is a mesh axis name.
    from solar_jax.parallel.sharding import MESH_AXES

    named = []
    for folder in ("models", "inference", "data"):
        for path in (PACKAGE / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in MESH_AXES:
                    named.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not named, named
