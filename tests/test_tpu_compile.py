"""plan --compile: the real train step compiled by libtpu for TPU slices, on this CPU machine.

A few layers with real head dims (128) keep each compile to seconds; the 10.7B compiles live
in the benchmark (python -m solar_jax.bench --config=configs/bench.py:tpu).
"""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, override, run_command
from solar_jax.config_files import load_config
from solar_jax.errors import SolarError
from solar_jax.hardware import gpu
from solar_jax.hardware.chips import GPUS
from solar_jax.models.config import ModelConfig
from solar_jax.planning import compiled as compiled_plan, hlo_stats
from solar_jax.training import memory as plan
from solar_jax.parallel import sharding
from solar_jax.hardware import tpu
from solar_jax.training.run_config import base_config, validate

# Mistral's head layout at a small width: 8 query heads of 128 over 2 kv heads.
SMALL = ModelConfig(model_type="mistral", vocab_size=4096, hidden_size=1024, intermediate_size=3584, num_layers=3,
                    num_heads=8, num_kv_heads=2, head_dim=128, sliding_window=256, max_position_embeddings=4096)


def _config(**kw):
    c = base_config()
    c.batch_size, c.seq_len, c.dtype, c.remat = 8, 512, "bfloat16", "dots_no_batch"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    for k, v in kw.items():
        c[k] = v
    return c


# Steps the size HBM holds (1-6 GiB per chip), where the fast planner is fitted: below ~1 GiB
# libtpu keeps buffers in on-chip memory, by generation (the planner is off by -15% to +70% there).
@pytest.mark.parametrize("device,topology,overrides", [
    ("tpu-v5p", "v5p:2x2x1", dict(batch_size=16, seq_len=4096)),  # the solar configs' policy
    ("tpu-v5e", "v5e:2x2", dict(batch_size=32, seq_len=2048)),
])
def test_fsdp_step_compiles_with_mosaic_splash_gathers_weights_and_fits_the_plan(device, topology, overrides):
    c = _config(**overrides)
    p = compiled_plan.compile_plan(c, SMALL, device, 4)
    assert p.topology == topology and p.mesh == (1, 4, 1) and p.kernel == "splash"
    assert p.memory["temporaries"] > 0 and p.memory["arguments"] > 0 and p.fits
    # Mosaic compiled the kernel (a custom call), not Pallas's interpret mode (plain HLO loops).
    assert p.kernel_flops > 0
    # FSDP: the layers' weights all-gathered in bf16 (forward, and again for the backward),
    # their gradients reduce-scattered (XLA combines some into one op: bytes, not counts);
    # no all-reduce moves anything the size of a weight. On v5e at 8 rows per chip libtpu
    # runs the gathers as collective matmuls instead: rings of collective-permutes.
    counts = SMALL.param_counts()
    layer_bytes = 2 * (counts["layers.attn"] + counts["layers.mlp"])
    moved = {k: p.collectives[k].bytes if k in p.collectives else 0 for k in hlo_stats.COLLECTIVES}
    if device == "tpu-v5p":
        assert moved["all-gather"] >= 2 * layer_bytes and moved["reduce-scatter"] >= layer_bytes, moved
        # Every gradient is reduce-scattered in bf16, the vocab tables' too (the logits' backward
        # takes its cotangent in the compute dtype: a float32 lm_head gradient adds 8.5% here).
        tables = 2 * (counts["embed"] + counts["lm_head"])
        assert moved["reduce-scatter"] == pytest.approx(layer_bytes + tables, rel=0.01), moved
    assert moved["all-gather"] + moved["reduce-scatter"] + moved["collective-permute"] >= 3 * layer_bytes, moved
    smallest_weight = 2 * SMALL.num_kv_heads * SMALL.head_dim * SMALL.hidden_size  # k in bf16
    all_reduce = p.collectives.get("all-reduce", hlo_stats.Collective("all-reduce"))
    assert all_reduce.bytes < smallest_weight, all_reduce
    assert "ESTIMATE (a cost model, not a measurement)" in p.report()
    # the fast planner (no compile) against the compiled peak
    planned = plan.plan(c, SMALL, device, 4)
    assert p.peak_bytes > 2**30
    assert abs(planned.total / p.peak_bytes - 1) < 0.10, (planned.report(), p.report())


def test_splash_at_seq_4096_with_a_sliding_window_and_packed_rows_compiles_with_mosaic():
    # segment ids are step inputs: packed rows; SMALL has Mistral's sliding window (256 here).
    config = dataclasses.replace(SMALL, num_layers=1)
    c = _config(seq_len=4096, batch_size=4)
    p = compiled_plan.compile_plan(c, config, "tpu-v5p", 4)
    assert p.kernel == "splash" and p.kernel_flops > 0 and p.fits
    # the kernel skips blocks outside the window: far fewer attention FLOPs than causal
    causal = compiled_plan.analytic_step_flops(c, dataclasses.replace(config, sliding_window=None), "splash")
    assert p.analytic["attention"] < 0.4 * causal["attention"]


@pytest.mark.parametrize("remat,unroll", [("none", 1), ("full", 1), ("full", 3)])
def test_flops_of_the_scanned_step_equal_the_analytic_count(remat, unroll):
    # Dense attention: every matmul is in the HLO, each counted as often as its loop runs.
    # Unrolled layers (scan_unroll=3) keep remat's recomputation (not merged with the forward).
    c = _config(remat=remat, attention_impl="xla", grad_accum_steps=2, scan_unroll=unroll)
    p = compiled_plan.compile_plan(c, SMALL, "tpu-v5p", 4)
    analytic = sum(p.analytic.values()) / p.chips
    assert p.kernel_flops == 0
    assert abs(p.hlo_flops / analytic - 1) < 0.05, (p.hlo_flops, analytic)
    # what cost_analysis alone reports: the scanned layers' and microbatches' bodies once
    assert p.xla_cost["flops"] < 0.6 * p.hlo_flops


def test_fast_planner_is_within_10_percent_of_the_compiled_dpo_peak():
    # DPO: chosen and rejected rows, and the frozen reference's forward pass (1.1 GiB per chip)
    c = _config(task="dpo", batch_size=8, seq_len=2048)
    config = dataclasses.replace(SMALL, num_layers=2)
    compiled = compiled_plan.compile_plan(c, config, "tpu-v5p", 4)
    planned = plan.plan(c, config, "tpu-v5p", 4)
    assert compiled.peak_bytes > 2**30
    assert abs(planned.total / compiled.peak_bytes - 1) < 0.10, (planned.report(), compiled.report())


def test_hlo_trip_counts_and_collective_bytes():
    text = """HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]) parameter(0)
  %x = f32[2,16]{1,0} get-tuple-element(%p), index=1
  %ag = f32[8,16]{1,0} all-gather(%x), replica_groups=[1,4]<=[4], dimensions={0}
  %d = f32[8,8]{1,0} dot(%ag, %ag), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %ag)
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %w = (s32[], f32[8,16]) while(%t0), condition=%cond, body=%body
  ROOT %r = f32[8,16]{1,0} all-reduce(%a), replica_groups={{0,1,2,3}}, to_apply=%add
}
"""
    comps = hlo_stats.parse(text)
    assert hlo_stats.multiplicities(comps)["body"] == 12
    assert hlo_stats.estimated_cycles(comps) == {}  # off TPU: no estimates in the HLO
    cols = hlo_stats.collectives(comps, 4)
    assert cols["all-gather"].ops == 1 and cols["all-gather"].count == 12
    assert cols["all-gather"].bytes == 12 * 8 * 16 * 4
    assert cols["all-gather"].wire_bytes == pytest.approx(12 * 8 * 16 * 4 * 3 / 4)
    assert cols["all-reduce"].count == 1 and cols["all-reduce"].wire_bytes == pytest.approx(2 * 512 * 3 / 4)
    assert hlo_stats.matmul_flops(comps) == 12 * 2 * 8 * 8 * 16


def test_collectives_are_told_apart_by_chain_not_by_channel_alone():
    # An async collective fusion clones one gather into its start, continuation and done
    # computations (same channel_id and chain_id): one gather. An unrolled loop's copies of a
    # reduce-scatter keep one channel_id and no chain_id: one per copy.
    gather = ('  %ag{i} = bf16[8,16]{{1,0}} all-gather(%x), channel_id=2, replica_groups=[1,4]<=[4], '
              'dimensions={{0}}, frontend_attributes={{chain_id="{chain}"}}\n')
    reduce = ('  %ar{i} = bf16[8,16]{{1,0}} all-reduce(%y), channel_id=9, replica_groups={{{{0,1,2,3}}}}, '
              'to_apply=%add\n')
    comps = []
    for i, chain in enumerate(["0", "0", "0", "1", "1", "1"]):  # two gathers, three clones each
        comps.append(f"%gather_fusion.{i} (x: bf16[2,16]) -> bf16[8,16] {{\n  %x = bf16[2,16]{{1,0}} parameter(0)\n"
                     + gather.format(i=i, chain=chain) + "}\n")
    for i in range(3):  # three layers' reduce-scatters
        comps.append(f"%all-reduce-scatter.{i} (y: bf16[8,16]) -> bf16[8,16] {{\n  %y = bf16[8,16]{{1,0}} parameter(0)\n"
                     + reduce.format(i=i) + "}\n")
    calls = "".join(f"  %f{i} = bf16[8,16]{{1,0}} fusion(%a), kind=kCustom, calls=%gather_fusion.{i}\n" for i in range(6))
    calls += "".join(f"  %r{i} = bf16[8,16]{{1,0}} fusion(%b), kind=kCustom, calls=%all-reduce-scatter.{i}\n"
                     for i in range(3))
    text = ("HloModule m\n\n" + "\n".join(comps) + "\nENTRY %main (a: bf16[2,16], b: bf16[8,16]) -> bf16[8,16] {\n"
            "  %a = bf16[2,16]{1,0} parameter(0)\n  %b = bf16[8,16]{1,0} parameter(1)\n" + calls
            + "  ROOT %t = bf16[8,16]{1,0} add(%f0, %r0)\n}\n")
    cols = hlo_stats.collectives(hlo_stats.parse(text), 4)
    assert cols["all-gather"].count == 2 and cols["all-gather"].bytes == 2 * 8 * 16 * 2
    assert cols["reduce-scatter"].count == 3 and cols["reduce-scatter"].bytes == 3 * 8 * 16 * 2


def test_the_cost_models_cycles_split_into_matmul_ops_and_the_rest():
    # libtpu writes each scheduled op's estimate into its backend config; a loop body's ops
    # count as often as the loop runs, a fusion holding a dot (even nested) is a matmul op.
    cfg = 'backend_config={{"flag_configs":[],"estimated_cycles":"{}"}}'
    text = f"""HloModule m

%inner (a: f32[8,8]) -> f32[8,8] {{
  %a = f32[8,8]{{1,0}} parameter(0)
  ROOT %d = f32[8,8]{{1,0}} dot(%a, %a), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
}}

%outer (b: f32[8,8]) -> f32[8,8] {{
  %b = f32[8,8]{{1,0}} parameter(0)
  ROOT %c = f32[8,8]{{1,0}} call(%b), to_apply=%inner
}}

%ew (e: f32[8,8]) -> f32[8,8] {{
  %e = f32[8,8]{{1,0}} parameter(0)
  ROOT %t = f32[8,8]{{1,0}} tanh(%e)
}}

%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {{
  %p = (s32[], f32[8,8]) parameter(0)
  %x = f32[8,8]{{1,0}} get-tuple-element(%p), index=1
  %m = f32[8,8]{{1,0}} fusion(%x), kind=kOutput, calls=%outer, {cfg.format(100)}
  %y = f32[8,8]{{1,0}} fusion(%m), kind=kLoop, calls=%ew, {cfg.format(7)}
  ROOT %t = (s32[], f32[8,8]) tuple(%i, %y)
}}

%cond (p: (s32[], f32[8,8])) -> pred[] {{
  %p = (s32[], f32[8,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {{
  %a = f32[8,8]{{1,0}} parameter(0)
  %w = (s32[], f32[8,8]) while(%t0), condition=%cond, body=%body
  ROOT %r = f32[8,8]{{1,0}} copy(%a), {cfg.format(5)}
}}
"""
    assert hlo_stats.estimated_cycles(hlo_stats.parse(text)) == {"matmul": 4 * 100, "other": 4 * 7 + 5}


def test_the_estimate_says_when_the_cost_model_gave_no_time():
    # libtpu's cost model returns a negative optimal_seconds for whole steps on v4, v5e, v6e.
    memory = dict(arguments=1, temporaries=1, outputs=1, aliased=1, code=1)
    analytic = dict(weights=4e15, attention=0.0)
    chip = tpu.CHIPS["tpu-v5e"]

    def estimate(seconds):
        p = compiled_plan.CompiledPlan("tpu-v5e", "v5e:2x2", 4, (1, 4, 1), "splash", 1.0, memory, chip.memory_bytes, {},
                                       1e15, 0.0, analytic, 4096, dict(flops=5e14, optimal_seconds=seconds))
        return p.estimate(), p.report(), p.step_cell()

    e, report, cell = estimate(-43.96)
    assert not e["cost_model"] and e["compute_seconds"] == pytest.approx(1e15 / chip.peak_flops)
    assert "XLA's TPU cost model gave no time for this step on v5e:2x2" in report
    assert cell == f"{1e15 / chip.peak_flops:.3f} (peak)"
    e, report, cell = estimate(8.0)  # 8 s for half the FLOPs: 16 s for all of them
    assert e["cost_model"] and e["compute_seconds"] == pytest.approx(16.0)
    assert "no time" not in report and cell == "16.000"


def test_topology_names():
    assert tpu.topology_name("tpu-v5p", 64) == "v5p:4x4x4"
    assert tpu.topology_name("tpu-v6e", 256) == "v6e:16x16"
    assert tpu.topology_name("tpu-v4", 64) == "v4:4x4x4"
    with pytest.raises(Exception, match="no v5p slice of 3 chips"):
        tpu.topology_name("tpu-v5p", 3)
    with pytest.raises(Exception, match="needs a TPU slice"):
        tpu.topology_name("h100", 8)


def _one_line_exit_2(r):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def test_libtpu_flags_are_added_by_name_and_the_users_values_win(monkeypatch):
    # The user turns one fusion step back on; solar_jax's other flags, one of whose names is a
    # prefix of the user's, are still added, and the user's value is kept.
    mine = "--xla_tpu_enable_async_collective_fusion_multiple_steps=true --xla_foo=1"
    monkeypatch.setenv("LIBTPU_INIT_ARGS", mine)
    tpu.apply_libtpu_flags()
    args = os.environ["LIBTPU_INIT_ARGS"].split()
    assert args[:2] == mine.split()
    assert "--xla_tpu_enable_async_collective_fusion=true" in args
    assert "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true" in args
    assert "--xla_tpu_enable_async_collective_fusion_multiple_steps=false" not in args
    assert len(args) == 2 + len(tpu.LIBTPU_FLAGS) - 1
    tpu.apply_libtpu_flags()  # idempotent
    assert os.environ["LIBTPU_INIT_ARGS"].split() == args


# plan --compile's checks, in this process (the command's exit-2 edge: test_layout and below).
@pytest.mark.parametrize("device, overrides, match", [
    ("v5p-6", {}, "no v5p slice of 3 chips"),
    ("h100x12", {}, "a GPU count must be at most 8 (one host) or a multiple of 8"),
    ("v5p-8", {"mesh.data": 1, "mesh.fsdp": 3}, "mesh data=1 x fsdp=3 x tensor=1 = 3 devices, but 4"),
    ("v5p-8", {"batch_size": 6}, "batch_size=6 (microbatch 6) is not divisible by the data-parallel size 4"),
])
def test_plan_compile_bad_input_is_refused_before_compiling(device, overrides, match):
    c = override(load_config("cpt.py", "tiny"), seq_len=128, **overrides)
    with pytest.raises(SolarError, match=re.escape(match)):
        name, count = plan.parse_device(device)
        (gpu if name in GPUS else tpu).check_can_compile(name, count)
        validate(c, count)


def test_plan_compile_without_libtpu_is_one_line():
    # A CPU machine without jax's tpu extra: the lookup of libtpu finds nothing.
    code = ("import runpy, sys; import solar_jax.hardware.tpu as t; t.libtpu_available = lambda: False; "
            "sys.argv = ['plan', '--config=configs/cpt.py:tiny', '--config.seq_len=128', '--device=v5p-8', "
            "'--compile']; runpy.run_module('solar_jax.plan', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XLA_FLAGS=""))
    _one_line_exit_2(r)
    assert "libtpu" in r.stderr and "jax[tpu]" in r.stderr


@pytest.mark.parametrize("slice_name,topology", [("v5p-8", "v5p:2x2x1"), ("v4-8", "v4:2x2x1"),
                                                 ("v6e-4", "v6e:2x2")])
def test_plan_compile_command_reports_the_compiled_step(slice_name, topology):
    r = run_command("solar_jax.plan", "--config=configs/cpt.py:tiny", "--config.seq_len=128",
                    "--config.mesh.data=1", "--config.mesh.fsdp=-1", f"--device={slice_name}", "--compile")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "", r.stderr  # libtpu told it compiles on a host of its own
    for text in (f"compiled for {topology}", "XLA memory per chip", "temporaries", "all-gather", "FLOPs per chip",
                 "ESTIMATE (a cost model, not a measurement)", "MFU"):
        assert text in r.stdout, text


def test_search_compiles_candidates_and_prints_the_best_overrides():
    r = run_command("solar_jax.plan", "--config=configs/cpt.py:tiny", "--config.seq_len=128", "--device=v5p-8",
                    "--search", "--search_limit=2")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if re.match(r"\| \d+ x \d+ x \d+ \|", line)]
    assert len(rows) == 2 and "ESTIMATES from a cost model" in r.stdout
    best = next(line for line in r.stdout.splitlines() if line.startswith("best: "))
    overrides = dict(flag.removeprefix("--config.").split("=") for flag in best.removeprefix("best: ").split())
    assert set(overrides) == {"mesh.data", "mesh.fsdp", "mesh.tensor", "remat", "grad_accum_steps"}
    data, fsdp, tensor = (int(overrides[f"mesh.{k}"]) for k in ("data", "fsdp", "tensor"))
    assert data * fsdp * tensor == 4
    bad = run_command("solar_jax.plan", "--config=configs/cpt.py:tiny", "--device=v5p-8", "--search",
                      "--search_limit=0")
    _one_line_exit_2(bad)


def test_a_step_libtpu_cannot_fit_is_reported_not_raised():
    # SMALL at 64 rows of 4096 per v5e chip (16 GiB): libtpu refuses to compile it.
    c = _config(seq_len=4096, batch_size=256, remat="none")
    with pytest.raises(compiled_plan.DoesNotFit, match="v5e:2x2: XLA cannot fit the step"):
        compiled_plan.compile_plan(c, SMALL, "tpu-v5e", 4)


def test_meshes_that_split_a_torus_axis_are_made():
    # data=2 x fsdp=128 on v6e-256's 16 x 16 torus: no one-to-one match of axes.
    tpu.compile_host_env("tpu-v6e")
    mesh = sharding.make_mesh(2, 128, 1, tpu.topology_devices("tpu-v6e", 256))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 128, "tensor": 1}


@pytest.mark.parametrize("reference", ["frozen", "precomputed"])
def test_dpo_steps_compile_with_their_reference(reference):
    c = _config(task="dpo", batch_size=4, seq_len=512)
    c.dpo.reference = reference
    p = compiled_plan.compile_plan(c, dataclasses.replace(SMALL, num_layers=2), "tpu-v5p", 4)
    # a frozen reference is a second forward pass inside the step; precomputed log-probs are inputs
    assert (p.analytic["reference_weights"] > 0) == (reference == "frozen")
    assert abs(p.flops_per_chip / (sum(p.analytic.values()) / p.chips) - 1) < 0.05
