"""SOLAR 10.7B's train step against MaxText's, both compiled by libtpu for the same TPU slice
at the same settings (Mistral-7B dims up-scaled to 48 layers, rows per chip x seq_len tokens,
remat, splash attention, FSDP over the slice, no accumulation), both read by the same code
(plan --compile's: compiled_plan.read_compiled). Printed per chip: XLA's memory, the
collectives by kind, and the step-time estimate (XLA's TPU cost model and the attention
kernel's FLOPs at peak: an ESTIMATE, never a measurement), with ratios ours / MaxText.

Each side is compiled with its layer loop scanned (one layer's body, both frameworks'
default) and unrolled (MaxText's scan_layers=False, solar_jax's scan_unroll = the layers).
MaxText runs from a checkout (maxtext_dir) with a Python >= 3.12 that has its requirements and
the same jax[tpu] as solar_jax (maxtext_python), through maxtext_worker.py, which never imports
solar_jax. It is compiled with its own libtpu flags and with solar_jax's (tpu.LIBTPU_FLAGS),
so that a difference the flags make is not taken for one the model code makes. A 48-layer
compile takes 1-6 min on 2 cores (unrolled: the longest).

GPU hosts (slice=h100x8, ...): both steps compiled by XLA's GPU compiler with no GPU attached
(the gpu-compile extra on both sides), cuDNN fused attention on both (MaxText's
cudnn_flash_jax, jax.nn.dot_product_attention's cuDNN path as solar_jax's cudnn), MaxText's
mesh from its own create_device_mesh over the same deviceless GPUs (maxtext_worker.py); the
step estimate is plan --compile's GPU one (FLOPs at an assumed fraction of peak, collectives
over NVLink and the NICs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from solar_jax.bench.tpu import task_config
from solar_jax.cli import split_list
from solar_jax.errors import SolarError
from solar_jax.hardware import gpu
from solar_jax.hardware.chips import CHIPS, GPUS
from solar_jax.models.config import ModelConfig
from solar_jax.planning import compiled as compiled_plan
from solar_jax.training import memory as plan
from solar_jax.hardware import tpu
from solar_jax.training.state import resolve_model

GiB = 2**30
WORKER = Path(__file__).with_name("maxtext_worker.py")
REMAT = {"full": "full"}  # solar_jax's policy -> MaxText's with the same saved residuals
LOOPS = ("scanned", "unrolled")
FLAG_SETS = ("own", "solar_jax")  # MaxText's libtpu flags: its own, or solar_jax's


def check(c) -> tuple[str, int]:
    """Everything the run needs, before any compile: (device, chips)."""
    train_compile = Path(c.maxtext_dir) / "src" / "maxtext" / "trainers" / "pre_train" / "train_compile.py"
    if not c.maxtext_dir or not train_compile.is_file():
        raise SolarError("--config.maxtext_dir must be a MaxText checkout (git clone "
                         "https://github.com/AI-Hypercomputer/maxtext), got " + repr(c.maxtext_dir))
    if not c.maxtext_python or not os.access(c.maxtext_python, os.X_OK):
        raise SolarError("--config.maxtext_python must be a Python >= 3.12 with MaxText's requirements and "
                         f"the same jax[tpu] as solar_jax's, got {c.maxtext_python!r}")
    if c.remat not in REMAT:
        raise SolarError(f"--config.remat: the policies both frameworks have are {', '.join(REMAT)}, got {c.remat!r}")
    for name, known in (("loops", LOOPS), ("maxtext_flags", FLAG_SETS)):
        values = split_list(c[name])
        if not values or not set(values) <= set(known):
            raise SolarError(f"--config.{name} takes a comma-separated list of {', '.join(known)}, got {c[name]!r}")
    if c.rows_per_chip <= 0 or c.seq_len <= 0 or c.layers < 0:
        raise SolarError("--config.rows_per_chip and --config.seq_len must be positive, --config.layers >= 0")
    device, chips = plan.parse_device(c.slice)
    if device in GPUS:
        gpu.check_can_compile(device, chips)
        if split_list(c.maxtext_flags) != ["own"]:
            raise SolarError("--config.maxtext_flags: libtpu flags mean nothing on GPUs; use own")
    else:
        tpu.check_can_compile(device, chips)
    return device, chips


def run_config(c, chips: int, unrolled: bool) -> tuple[Any, ModelConfig]:
    """cpt.py:solar (Mistral-7B up-scaled to 48 layers, or c.layers of them) at the
    comparison's settings, and its model."""
    run = task_config("cpt")
    config = resolve_model(run).config
    if c.layers:
        config = dataclasses.replace(config, num_layers=c.layers)
    run = compiled_plan.with_overrides(run, {
        "batch_size": c.rows_per_chip * chips, "seq_len": c.seq_len, "remat": c.remat, "grad_accum_steps": 1,
        "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1, "attention_impl": _kernel(c), "dtype": "bfloat16",
        "logits_dtype": c.logits_dtype,
        "scan_unroll": config.num_layers if unrolled else 1})
    return run, config


def _kernel(c) -> str:
    return "cudnn" if plan.parse_device(c.slice)[0] in GPUS else "splash"


def maxtext_env(flags: str) -> dict[str, str]:
    """This process's libtpu host variables (tpu.compile_host_env set them); LIBTPU_INIT_ARGS
    without solar_jax's flags for MaxText's own set."""
    env = dict(os.environ, DECOUPLE_GCLOUD="TRUE", PYTHONUNBUFFERED="1")
    if flags == "own":
        ours = {f.split("=")[0] for f in tpu.LIBTPU_FLAGS}
        env["LIBTPU_INIT_ARGS"] = " ".join(a for a in env.get("LIBTPU_INIT_ARGS", "").split()
                                           if a.split("=")[0] not in ours)
    return env


def compile_maxtext(c, run, config, device: str, chips: int, unrolled: bool, flags: str):
    """MaxText's step compiled by maxtext_worker.py, read as plan --compile reads ours."""
    on_gpu = device in GPUS
    # MaxText names slices as solar_jax does, but v5e's as v5e-N; GPU hosts of 8 H100s "a3"
    # (its only GPU target; the GPUs themselves come from the deviceless compiler, below)
    topology = "a3" if on_gpu else c.slice.lower().replace("v5litepod", "v5e")
    overrides = [f"compile_topology={topology}",
                 "compile_topology_num_slices=1", "model_name=mistral-7b", "override_model_config=True",
                 f"base_num_decoder_layers={config.num_layers}", f"per_device_batch_size={c.rows_per_chip}",
                 f"max_target_length={c.seq_len}", f"remat_policy={REMAT[c.remat]}",
                 f"attention={'cudnn_flash_jax' if on_gpu else 'flash'}",
                 f"scan_layers={not unrolled}", "dataset_type=synthetic", "enable_checkpointing=False"]
    if on_gpu:
        overrides.append("hardware=gpu")
    env = maxtext_env(flags)
    env["PYTHONPATH"] = str(Path(c.maxtext_dir) / "src")
    with tempfile.TemporaryDirectory() as out:
        if on_gpu:
            Path(out, "target.txtpb").write_text(gpu.target_config(GPUS[device]))
            env.update(SOLAR_JAX_GPU_TARGET=str(Path(out, "target.txtpb")), JAX_PLATFORMS="cpu",
                       SOLAR_JAX_GPU_TOPOLOGY=gpu.topology_name(device, chips), JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1")
        r = subprocess.run([c.maxtext_python, str(WORKER), out, *overrides], env=env, capture_output=True, text=True)
        if r.returncode != 0 or not Path(out, "step.json").exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SolarError(f"MaxText's train_compile failed ({' '.join(overrides)}): {last}")
        record = json.loads(Path(out, "step.json").read_text())
        text = Path(out, "step.hlo.txt").read_text()
    hosts = [i // GPUS[device].gpus_per_host for i in range(chips)] if on_gpu else None
    return compiled_plan.read_compiled(run, config, device, chips, (1, chips, 1), _kernel(c),
                                       record["compile_seconds"], record["memory"], text, record["cost"], hosts=hosts)


def row(side: str, loop: str, flags: str, p: compiled_plan.CompiledPlan) -> dict:
    e = p.estimate()
    gib = lambda kind: p.collectives[kind].bytes / GiB if kind in p.collectives else 0.0  # noqa: E731
    wire = sum(col.wire_bytes for col in p.collectives.values()) / GiB
    cost_model = e["compute_seconds"] - (p.kernel_flops / CHIPS[p.device].peak_flops if p.platform == "tpu" else 0.0)
    return dict(side=side, loop=loop, flags=flags, compile=p.compile_seconds, temp=p.memory["temporaries"] / GiB,
                peak=p.peak_bytes / GiB, code=p.memory["code"] / GiB, ag=gib("all-gather"), rs=gib("reduce-scatter"),
                ar=gib("all-reduce"), wire=wire, cost_model=cost_model, step=e["step_seconds"],
                tps=e["tokens_per_second_per_chip"], estimated=e["cost_model"])


def main(c) -> None:
    device, chips = check(c)
    compiled_plan.without_persistent_cache()
    if device not in GPUS:
        tpu.compile_host_env(device)
    rows = []
    for loop in split_list(c.loops):
        unrolled = loop == "unrolled"
        run, config = run_config(c, chips, unrolled)
        rows.append(row("solar_jax", loop, "solar_jax", compiled_plan.compile_plan(run, config, device, chips)))
        print(_line(rows[-1]), flush=True)
        for flags in split_list(c.maxtext_flags):
            rows.append(row("MaxText", loop, flags, compile_maxtext(c, run, config, device, chips, unrolled, flags)))
            print(_line(rows[-1]), flush=True)
    print()
    print(f"{c.slice}, Mistral-7B dims x {config.num_layers} layers, {c.rows_per_chip} x {c.seq_len} tokens per chip, "
          f"remat {c.remat}, {_kernel(c)} attention, fsdp {chips}, solar_jax's logits_dtype {c.logits_dtype} "
          "(MaxText's: compute); per chip:")
    print(table(rows, device in GPUS))


def _line(r: dict) -> str:
    return (f"  compiled {r['side']} ({r['loop']}, {r['flags']} flags) in {r['compile']:.0f}s: temporaries "
            f"{r['temp']:.2f} GiB, est. step {r['step']:.3f}s")


def table(rows: list[dict], on_gpu: bool = False) -> str:
    lines = ["| side | layer loop | libtpu flags | temporaries GiB | peak GiB | code GiB | all-gather GiB | "
             "reduce-scatter GiB | all-reduce GiB | on the wire GiB | est. cost model s | est. step s | "
             "est. tokens/s/chip |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = "" if r["estimated"] else " (peak)"
        lines.append(f"| {r['side']} | {r['loop']} | {r['flags']} | {r['temp']:.2f} | {r['peak']:.2f} | {r['code']:.2f} "
                     f"| {r['ag']:.2f} | {r['rs']:.2f} | {r['ar']:.2f} | {r['wire']:.2f} | {r['cost_model']:.3f} | "
                     f"{r['step']:.3f}{mark} | {r['tps']:,.0f} |")
    lines.append("")
    for ours in (r for r in rows if r["side"] == "solar_jax"):
        for theirs in (r for r in rows if r["side"] == "MaxText" and r["loop"] == ours["loop"]):
            ratio = lambda key, digits=3: (f"{ours[key] / theirs[key]:.{digits}f}x" if theirs[key]  # noqa: E731
                                           else "-")
            lines.append(f"{ours['loop']}, solar_jax / MaxText ({theirs['flags']} flags): temporaries "
                         f"{ratio('temp')}, on the wire {ratio('wire')}, est. step {ratio('step', 4)} "
                         f"(cost model alone {ratio('cost_model', 4)})")
    lines.append("")
    if on_gpu:
        lines.append("Memory and collectives: XLA's memory analysis and optimized HLO, each collective as often as its "
                     "loop runs. 'est.' columns: ESTIMATES, not measurements: all FLOPs at "
                     f"{compiled_plan.GPU_EFFICIENCY:.0%} of the bf16 peak (XLA has no GPU cost model without a GPU), "
                     "collectives over NVLink and the hosts' NICs.")
        return "\n".join(lines)
    lines.append("Memory and collectives: XLA's memory analysis and optimized HLO, each collective as often as its loop "
                 "runs. 'est. cost model s': XLA's TPU cost model (optimal_seconds, scaled to every loop iteration); "
                 "'est. step s' adds the splash kernel's FLOPs at the chip's peak (the cost model does not see inside "
                 f"Mosaic kernels). ESTIMATES, not measurements; {compiled_plan.PEAK_MARK_NOTE}.")
    return "\n".join(lines)
