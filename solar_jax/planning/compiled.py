"""plan --compile: the real train step compiled for a TPU slice or GPU hosts, and what the compiler says of it.

The step is built exactly as the train command builds it (state_layout, objective,
lower_train_step, the attention kernel of the target platform) against a Mesh of the
slice's devices from libtpu, or of the GPUs from XLA's GPU compiler (hardware/gpu.py), with
no TPU or GPU attached. Reported per chip: XLA's memory analysis,
the collectives by kind with their bytes per step, the FLOPs per step (every scanned layer
and microbatch counted as often as it runs, from the HLO) against the analytic count, and a
step-time estimate. The estimate is a model, not a measurement:
  compute  = XLA's TPU cost model (cost_analysis()'s optimal_seconds, which sees each loop
             body once, scaled by HLO FLOPs / the FLOPs it counted), plus the attention
             kernel's FLOPs (hidden in a Mosaic custom call, counted analytically) at peak;
             never below all FLOPs at the chip's bf16 peak, and only that where libtpu's
             cost model gives no time for the step (a negative optimal_seconds: v4, v5e and
             v6e; the report says so)
  comm     = ring wire bytes per chip / half the chip's bidirectional ICI bandwidth
  step     = max(compute, comm) (collectives overlapped with compute, as XLA schedules them
             asynchronously); compute + comm is the bound with no overlap.
On GPUs XLA has no cost model at compile time (no autotuning, cost_analysis() is None):
  compute  = all FLOPs at GPU_EFFICIENCY of the chip's bf16 peak (an assumption, stated in
             the report)
  comm     = wire bytes per GPU of collectives within a host / NVLink's bandwidth per
             direction + those of collectives whose groups span hosts / the GPU's NIC
             bandwidth (one InfiniBand NIC per GPU), as NCCL's bus bandwidth model has it
and the memory that fits is jax's allocator's share of the GPU (hardware/gpu.py).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
from flax import nnx

from solar_jax.config_files import set_keys
from solar_jax.errors import SolarError
from solar_jax.hardware import gpu
from solar_jax.hardware.chips import CHIPS, GPUS
from solar_jax.models import attention
from solar_jax.models import transformer as model_lib
from solar_jax.models.config import ModelConfig
from solar_jax.planning import hlo_stats
from solar_jax.parallel import sharding
from solar_jax.hardware import tpu
from solar_jax.training import memory as plan_lib
from solar_jax.training.run_config import validate
from solar_jax.training.state import state_layout
from solar_jax.training.step import lower_train_step, model_options, objective_for
from solar_jax.data.task_data import batch_fields

GiB = 2**30
# The fraction of peak bf16 FLOP/s a GPU step is assumed to reach (no cost model on GPU):
# an assumption, not a measurement, stated next to every figure made with it.
GPU_EFFICIENCY = 0.5
# What a table's "(peak)" mark means (CompiledPlan.step_cell).
PEAK_MARK_NOTE = ("'(peak)': libtpu's cost model gave no time for the step, the figure is its FLOPs at the chip's "
                  "bf16 peak, a lower bound")


class DoesNotFit(SolarError):
    """libtpu refused the step: it needs more HBM than a chip has."""


def analytic_step_flops(c, config: ModelConfig, kernel: str) -> dict[str, float]:
    """FLOPs of one train step over the whole batch, by part: matmuls with weights, attention
    scores and values, and what remat recomputes. Dense attention computes all T x T scores;
    causal splash skips blocks above the diagonal (about half, plus the diagonal blocks)."""
    rows = c.batch_size * (2 if c.task == "dpo" else 1)
    tokens = rows * c.seq_len
    d, h = config.hidden_size, config.head_dim
    layer = d * h * (2 * config.num_heads + 2 * config.num_kv_heads) + 3 * d * config.intermediate_size
    weights_fwd = 2 * tokens * (config.num_layers * layer + config.vocab_size * d)
    keys = c.seq_len
    if kernel == "splash":
        block = next((s for s in attention.SPLASH_BLOCKS if c.seq_len % s == 0), c.seq_len)
        keys = (c.seq_len + block) / 2
        if config.sliding_window:
            keys = min(keys, config.sliding_window + block)
    attn_fwd = 4 * tokens * keys * config.num_heads * h * config.num_layers
    # dots_no_batch keeps the projections' outputs but not the batched attention dots.
    # full recomputes every layer's forward but its down projection, whose output only feeds the
    # next layer's input, which the scan keeps (XLA drops the dead recomputation).
    recompute_weights = 2 * tokens * config.num_layers * (layer - d * config.intermediate_size) \
        if c.remat == "full" else 0.0
    recompute_attention = attn_fwd if c.remat in ("full", "dots_no_batch") else 0.0
    frozen = c.task == "dpo" and c.dpo.reference == "frozen"  # the reference's forward pass
    return dict(weights=3 * weights_fwd, attention=3 * attn_fwd, recompute_weights=recompute_weights,
                recompute_attention=recompute_attention, reference_weights=weights_fwd if frozen else 0.0,
                reference_attention=attn_fwd if frozen else 0.0)


def attention_flops(analytic: dict[str, float]) -> float:
    return analytic["attention"] + analytic["recompute_attention"] + analytic["reference_attention"]


@dataclasses.dataclass
class CompiledPlan:
    device: str
    topology: str
    chips: int
    mesh: tuple[int, int, int]
    kernel: str
    compile_seconds: float
    memory: dict[str, int]  # per chip: arguments, temporaries, outputs, aliased, code
    capacity: int
    collectives: dict[str, hlo_stats.Collective]
    hlo_flops: float  # per chip per step, from the HLO's dots and convolutions
    kernel_flops: float  # per chip: attention inside custom calls, counted analytically
    analytic: dict[str, float]  # whole step, all chips
    tokens_per_step: int
    xla_cost: dict[str, float]  # cost_analysis(), which counts loop bodies once
    # XLA's TPU cost model per op, every loop iteration: hlo_stats.estimated_cycles
    cycles: dict[str, float] = dataclasses.field(default_factory=dict)
    # GPUs: cuDNN attention custom calls per step, whose workspace a deviceless compile leaves
    # at zero bytes (not in `memory`), and spec fields this jaxlib's XLA did not know
    cudnn_calls: int = 0
    dropped_spec_fields: tuple[str, ...] = ()

    @property
    def platform(self) -> str:
        return CHIPS[self.device].platform

    @property
    def peak_bytes(self) -> int:
        m = self.memory
        return m["arguments"] + m["temporaries"] + m["outputs"] - m["aliased"] + m["code"]

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity

    @property
    def flops_per_chip(self) -> float:
        return self.hlo_flops + self.kernel_flops

    def estimate(self) -> dict[str, float]:
        """Seconds per step (the module's docstring): on TPU by XLA's TPU cost model
        (optimal_seconds, which sees each loop body once, scaled by the HLO FLOPs over the
        FLOPs it counted, plus the kernel's FLOPs at peak), collectives over ICI; on GPU from
        assumptions; and what follows for tokens/s and MFU."""
        chip = CHIPS[self.device]
        if chip.platform == "gpu":
            return self._gpu_estimate(chip)
        at_peak = self.flops_per_chip / chip.peak_flops
        counted, seconds = self.xla_cost.get("flops", 0.0), self.xla_cost.get("optimal_seconds", 0.0)
        # libtpu's cost model gives a negative optimal_seconds for whole train steps on v4, v5e
        # and v6e (e.g. -44 s on v5e-4): no time at all. Then only the FLOPs-at-peak floor is left.
        cost_model = counted > 0 and seconds > 0
        xla = seconds * self.hlo_flops / counted + self.kernel_flops / chip.peak_flops if cost_model else 0.0
        compute = max(at_peak, xla)
        wire = sum(c.wire_bytes for c in self.collectives.values())
        comm = wire / (chip.link_bandwidth / 2)
        step = max(compute, comm)
        model_flops = self.analytic["weights"] + self.analytic["attention"]
        return dict(cost_model=cost_model, peak_seconds=at_peak, compute_seconds=compute, comm_seconds=comm,
                    step_seconds=step,
                    no_overlap_seconds=compute + comm, tokens_per_second_per_chip=self.tokens_per_step / self.chips / step,
                    mfu=model_flops / self.chips / step / chip.peak_flops)

    def _gpu_estimate(self, chip) -> dict[str, float]:
        at_peak = self.flops_per_chip / chip.peak_flops
        compute = at_peak / GPU_EFFICIENCY
        cross = sum(c.cross_host_wire_bytes for c in self.collectives.values())
        local = sum(c.wire_bytes for c in self.collectives.values()) - cross
        nvlink, network = local / (chip.link_bandwidth / 2), cross / chip.network_bandwidth if cross else 0.0
        comm = nvlink + network
        step = max(compute, comm)
        model_flops = self.analytic["weights"] + self.analytic["attention"]
        return dict(cost_model=True, peak_seconds=at_peak, compute_seconds=compute, comm_seconds=comm,
                    nvlink_seconds=nvlink, network_seconds=network, step_seconds=step,
                    no_overlap_seconds=compute + comm,
                    tokens_per_second_per_chip=self.tokens_per_step / self.chips / step,
                    mfu=model_flops / self.chips / step / chip.peak_flops)

    def step_cell(self, digits: int = 3) -> str:
        """The estimated step seconds for a table, marked "(peak)" where the cost model gave no time."""
        e = self.estimate()
        return f"{e['step_seconds']:.{digits}f}" + ("" if e["cost_model"] else " (peak)")

    def report(self) -> str:
        m = self.memory
        unit = "GPU" if self.platform == "gpu" else "chip"
        hosts = f"{self.chips} GPUs of {self.device}, hosts x GPUs {self.topology.split('x', 1)[1]}" \
            if self.platform == "gpu" else f"{self.chips} chips of {self.device}"
        lines = [f"compiled for {self.topology} ({hosts}) in {self.compile_seconds:.1f}s: "
                 f"mesh data={self.mesh[0]} fsdp={self.mesh[1]} tensor={self.mesh[2]}, attention {self.kernel}",
                 f"XLA memory per {unit}:"]
        for key in ("arguments", "temporaries", "outputs", "aliased", "code"):
            lines.append(f"  {key:12s} {m[key] / GiB:9.2f} GiB")
        verdict = "fits" if self.fits else "does NOT fit"
        fraction = gpu.memory_fraction()
        share = (f" (jax's allocator's {fraction:.0%} of {self.capacity / fraction / GiB:.1f} GiB: "
                 f"XLA_PYTHON_CLIENT_MEM_FRACTION; the rest holds cuBLAS/cuDNN workspaces and NCCL buffers, which "
                 f"XLA does not count)" if self.platform == "gpu" else "")
        lines.append(f"  {'peak':12s} {self.peak_bytes / GiB:9.2f} GiB: {verdict} in {self.capacity / GiB:.1f} GiB "
                     f"({self.peak_bytes / self.capacity:.0%}){share}")
        if self.cudnn_calls:
            lines.append(f"  not counted: the workspace of {self.cudnn_calls} cuDNN attention calls per step (a "
                         f"deviceless compile sizes it at zero; cuDNN sets it on the GPU)")
        if self.dropped_spec_fields:
            lines.append(f"  GPU spec fields this jax's XLA does not know, dropped: "
                         f"{', '.join(self.dropped_spec_fields)}")
        lines.append(f"collectives per {unit} per step:")
        if not self.collectives:
            lines.append("  none")
        for kind in hlo_stats.COLLECTIVES:
            if kind in self.collectives:
                col = self.collectives[kind]
                across = (f", {col.cross_host_wire_bytes / GiB:.3f} GiB of it between hosts"
                           if col.cross_host_wire_bytes else "")
                lines.append(f"  {kind:18s} {col.ops:4d} ops run {col.count:6d} times {col.bytes / GiB:9.3f} GiB "
                             f"(on the wire {col.wire_bytes / GiB:.3f} GiB{across})")
        analytic = sum(self.analytic.values()) / self.chips
        lines.append(f"FLOPs per {unit} per step: {self.flops_per_chip:.4g} (HLO matmuls {self.hlo_flops:.4g} + "
                     f"attention "
                     f"kernel {self.kernel_flops:.4g}); analytic {analytic:.4g} ({self.flops_per_chip / analytic:.3f}x); "
                     f"XLA cost_analysis counts loop bodies once: {self.xla_cost.get('flops', 0):.4g}")
        if self.cycles:
            total = sum(self.cycles.values())
            lines.append(f"XLA's TPU cost model by op (estimated cycles, every loop iteration): ops holding a matmul "
                         f"{self.cycles['matmul'] / total:.1%}, the rest {self.cycles['other'] / total:.1%} "
                         f"(elementwise, reductions, copies)")
        e = self.estimate()
        if self.platform == "gpu":
            chip = CHIPS[self.device]
            lines.append(f"ESTIMATE (assumptions, not a measurement; XLA has no GPU cost model without a GPU): compute "
                         f"{e['compute_seconds']:.3f}s (all FLOPs at {GPU_EFFICIENCY:.0%} of the bf16 peak, "
                         f"{chip.peak_flops / 1e12:.0f} TFLOP/s), collectives {e['comm_seconds']:.3f}s (NVLink "
                         f"{e['nvlink_seconds']:.3f}s at {chip.link_bandwidth / 2e9:.0f} GB/s per direction, between "
                         f"hosts {e['network_seconds']:.3f}s at {chip.network_bandwidth / 1e9:.0f} GB/s per GPU), step "
                         f"{e['step_seconds']:.3f}s (no overlap: {e['no_overlap_seconds']:.3f}s); "
                         f"{e['tokens_per_second_per_chip']:,.0f} tokens/s per GPU, MFU {e['mfu']:.1%}")
            return "\n".join(lines)
        basis = (f"XLA's TPU cost model, every loop iteration; at peak FLOP/s {e['peak_seconds']:.3f}s"
                 if e["cost_model"] else
                 f"FLOPs at the bf16 peak, a lower bound: XLA's TPU cost model gave no time for this step on "
                 f"{self.topology} (optimal_seconds {self.xla_cost.get('optimal_seconds', 0.0):.3g})")
        lines.append(f"ESTIMATE (a cost model, not a measurement): compute {e['compute_seconds']:.3f}s ({basis}), "
                     f"collectives {e['comm_seconds']:.3f}s, step {e['step_seconds']:.3f}s "
                     f"(no overlap: {e['no_overlap_seconds']:.3f}s); {e['tokens_per_second_per_chip']:,.0f} tokens/s "
                     f"per chip, MFU {e['mfu']:.1%}")
        return "\n".join(lines)


def without_persistent_cache() -> None:
    """For a process that compiles for TPUs it does not have: a TPU executable cannot be loaded
    back from a persistent compilation cache without a TPU client (reading one only warns and
    recompiles). jax decides on the cache at its first compile, so call this before any."""
    jax.config.update("jax_enable_compilation_cache", False)


def target_devices(device: str, chips: int, gpu_spec: str | None = None,
                   dropped: list[str] | None = None) -> tuple[str, list, int]:
    """(topology name, devices, bytes per device the step may use) of a TPU slice or of GPU
    hosts, for compiles with none attached. gpu_spec: a GpuTargetConfigProto text to compile
    for instead of the chip table's description (its unknown fields go to `dropped`)."""
    if device in GPUS:
        devices = gpu.topology_devices(device, chips, gpu_spec, dropped)
        capacity = (int(gpu.spec_memory_bytes(gpu_spec) * gpu.memory_fraction()) if gpu_spec
                    else plan_lib.device_capacity(device))
        return gpu.topology_name(device, chips), devices, capacity
    if gpu_spec:
        raise SolarError(f"--gpu_spec is for GPUs, not {device}")
    return tpu.topology_name(device, chips), tpu.topology_devices(device, chips), plan_lib.device_capacity(device)


def compile_plan(c, config: ModelConfig, device: str, chips: int, trainable: dict | None = None,
                 gpu_spec: str | None = None) -> CompiledPlan:
    """Compiles the train step of run config c for the slice or GPUs (device, chips) and reads it."""
    dropped: list[str] = []
    topology, devices, capacity = target_devices(device, chips, gpu_spec, dropped)
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, devices)
    options = model_options(c, mesh, config)
    graphdef, _ = nnx.split(model_lib.abstract_model(config, **options))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        layout = state_layout(c, config, mesh)
        lowered = lower_train_step(c, graphdef, layout, objective_for(c, graphdef), batch_fields(c), mesh, trainable)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            # XLA on TPU refuses to compile what cannot fit in HBM, saying how much it needs.
            needs = re.search(r"required for HLO temporaries \(([\d.]+)G\)", str(e))
            raise DoesNotFit(f"{topology}: XLA cannot fit the step in a chip's HBM"
                             + (f" (temporaries {needs.group(1)}G)" if needs else "")) from None
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis() or {}
    plan = read_compiled(c, config, device, chips, tuple(mesh.devices.shape), options["attention_impl"], seconds,
                         memory_stats(compiled.memory_analysis()), compiled.as_text(),
                         cost[0] if isinstance(cost, list) else cost,
                         hosts=[d.process_index for d in mesh.devices.flat], capacity=capacity)
    plan.dropped_spec_fields = tuple(dropped)
    return plan


def memory_stats(stats) -> dict[str, int]:
    """compiled.memory_analysis() -> the per-chip byte counts a CompiledPlan keeps."""
    return dict(arguments=stats.argument_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                outputs=stats.output_size_in_bytes, aliased=stats.alias_size_in_bytes,
                code=stats.generated_code_size_in_bytes)


def read_compiled(c, config: ModelConfig, device: str, chips: int, mesh_shape: tuple[int, ...], kernel: str,
                  compile_seconds: float, memory: dict[str, int], hlo_text: str, cost: dict,
                  hosts: list[int] | None = None, capacity: int | None = None) -> CompiledPlan:
    """What a train step compiled for (device, chips) says of itself: its memory analysis,
    optimized HLO text and cost_analysis(), read as plan --compile reports them. The step may
    be another framework's (bench maxtext) when c and config describe the same model and batch.
    hosts: the host (process index) of each device in the executable's order, for telling
    collectives between hosts apart; capacity: bytes per device the step may use."""
    comps = hlo_stats.parse(hlo_text)
    times = hlo_stats.multiplicities(comps)
    analytic = analytic_step_flops(c, config, kernel)
    calls = hlo_stats.custom_calls(comps, times)
    kernel_flops = 0.0
    if kernel == "splash" and calls.get("tpu_custom_call"):
        # The scores and values matmuls (forward, backward, recomputation) run inside Mosaic.
        kernel_flops = attention_flops(analytic) / chips
    cudnn_calls = sum(n for target, n in calls.items() if target.startswith("__cudnn$fmha"))
    if kernel == "cudnn" and cudnn_calls:  # the same, inside cuDNN's fused attention
        kernel_flops = attention_flops(analytic) / chips
    topology = gpu.topology_name(device, chips) if device in GPUS else tpu.topology_name(device, chips)
    capacity = capacity if capacity is not None else plan_lib.device_capacity(device)
    return CompiledPlan(device, topology, chips, mesh_shape, kernel, compile_seconds,
                        memory, capacity, hlo_stats.collectives(comps, chips, times, hosts),
                        hlo_stats.matmul_flops(comps, times), kernel_flops, analytic,
                        c.batch_size * c.seq_len * (2 if c.task == "dpo" else 1),
                        {k: float(v) for k, v in cost.items() if k in ("flops", "optimal_seconds", "bytes accessed")},
                        hlo_stats.estimated_cycles(comps, times), cudnn_calls)


# ---- --search: candidate settings for a slice, compiled and ranked -------------------------

REMAT_ORDER = ("none", "dots", "dots_no_batch", "full")  # less recomputation first


@dataclasses.dataclass
class Candidate:
    overrides: dict[str, Any]  # config keys -> values, as --config.KEY=VALUE
    planned_bytes: int  # the fast planner's per-chip total
    compiled: CompiledPlan | None = None
    refused: str = ""  # libtpu's reason when it could not fit the step

    def flags(self) -> str:
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides.items())


def with_overrides(c, overrides: dict[str, Any]):
    """A copy of c with the dotted keys set."""
    return set_keys(c.copy_and_resolve_references(), overrides)


def search_candidates(c, config: ModelConfig, device: str, chips: int) -> list[Candidate]:
    """Meshes (all FSDP, two-way data parallel, 2-8-way tensor parallel where heads divide),
    remat policies and microbatch counts that validate; the fast planner drops those it says
    cannot fit even with 20% to spare."""
    meshes = []
    for tensor in (1, 2, 4, 8):
        if chips % tensor or config.num_kv_heads % tensor or config.num_heads % tensor:
            continue
        for data in (1, 2):
            if chips % (data * tensor) == 0:
                meshes.append((data, chips // (data * tensor), tensor))
    out = []
    for (data, fsdp, tensor) in meshes:
        for remat in REMAT_ORDER:
            for accum in (1, 2, 4, 8, 16):
                overrides = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, "remat": remat,
                             "grad_accum_steps": accum}
                trial = with_overrides(c, overrides)
                try:
                    validate(trial, chips)
                except SolarError:
                    continue
                p = plan_lib.plan(trial, config, device, chips)
                if p.total > 1.2 * p.capacity:
                    continue
                out.append(Candidate(overrides, p.total))
    # Fewest microbatches and the plainest mesh first, each with every remat policy: the
    # planner's margin decides little (its error on a policy it was not fitted for at this
    # size can be large), so the first few compiles span the policies.
    out.sort(key=lambda k: (k.overrides["grad_accum_steps"], k.overrides["mesh.tensor"], k.overrides["mesh.data"],
                            REMAT_ORDER.index(k.overrides["remat"])))
    return out


def search(c, config: ModelConfig, device: str, chips: int, limit: int, trainable: dict | None = None,
           progress=print, gpu_spec: str | None = None) -> list[Candidate]:
    """Compiles up to `limit` candidates in search_candidates' order; returns those compiled."""
    compiled = []
    for cand in search_candidates(c, config, device, chips)[:limit]:
        try:
            cand.compiled = compile_plan(with_overrides(c, cand.overrides), config, device, chips, trainable, gpu_spec)
        except DoesNotFit as e:
            cand.refused = str(e)
            progress(f"  {cand.flags()}: {e}", flush=True)
        else:
            unit = "GPU" if cand.compiled.platform == "gpu" else "chip"
            progress(f"  compiled {cand.flags()}: {cand.compiled.peak_bytes / GiB:.2f} GiB per {unit}, "
                     f"estimated step {cand.compiled.estimate()['step_seconds']:.3f}s", flush=True)
        compiled.append(cand)
    return compiled


def best(candidates: list[Candidate]) -> Candidate | None:
    """The fitting candidate with the highest estimated tokens/s per chip."""
    fitting = [k for k in candidates if k.compiled is not None and k.compiled.fits]
    return max(fitting, key=lambda k: k.compiled.estimate()["tokens_per_second_per_chip"], default=None)


def search_table(candidates: list[Candidate]) -> str:
    lines = ["| mesh (data x fsdp x tensor) | remat | microbatches | planner GiB | compiled GiB | fits "
             "| est. step s | est. tokens/s/chip | est. MFU |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for k in candidates:
        o, p = k.overrides, k.compiled
        if p is None:
            lines.append(f"| {o['mesh.data']} x {o['mesh.fsdp']} x {o['mesh.tensor']} | {o['remat']} | "
                         f"{o['grad_accum_steps']} | {k.planned_bytes / GiB:.1f} | - | no: {k.refused} | | | |")
            continue
        e = p.estimate()
        lines.append(f"| {o['mesh.data']} x {o['mesh.fsdp']} x {o['mesh.tensor']} | {o['remat']} | "
                     f"{o['grad_accum_steps']} | {k.planned_bytes / GiB:.1f} | {p.peak_bytes / GiB:.1f} | "
                     f"{'yes' if p.fits else 'no'} | {p.step_cell()} | {e['tokens_per_second_per_chip']:,.0f} "
                     f"| {e['mfu']:.1%} |")
    return "\n".join(lines)
