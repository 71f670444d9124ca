"""SOLAR 10.7B's train steps compiled by libtpu for TPU slices (no TPU needed): per task and
slice, the fast planner's per-chip memory against XLA's compiled memory, the collectives, and
the step-time estimate (a cost model, plan --compile's, never a measurement). search=True
also runs plan --search on the first slice and task. Each 48-layer compile takes ~2-3 min on
2 cores."""

from __future__ import annotations

from solar_jax.cli import split_list
from solar_jax.config_files import get_key, load_config
from solar_jax.errors import SolarError
from solar_jax.planning import compiled as compiled_plan
from solar_jax.training import memory as plan
from solar_jax.training.run_config import validate
from solar_jax.training.state import resolve_model

# task -> (config file, variant, the 10.7B model as a preset of random weights): CPT up-scales
# Mistral-7B (32 -> 48 layers, m = 8); SFT and DPO start from the 48-layer model.
TASKS = {"cpt": ("cpt.py", "solar", "mistral-7b"), "sft": ("sft.py", "solar", "solar-10.7b"),
         "dpo": ("dpo.py", "solar", "solar-10.7b")}


def task_config(task: str, overrides: str = ""):
    if task not in TASKS:
        raise SolarError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    name, variant, preset = TASKS[task]
    c = load_config(name, variant)
    c.model_preset = preset
    for item in split_list(overrides):
        key, _, value = item.partition("=")
        c = compiled_plan.with_overrides(c, {key: type(get_key(c, key))(value)})
    return c


def main(c) -> None:
    compiled_plan.without_persistent_cache()
    rows = ["| task | slice | settings | planner GiB/chip | compiled GiB/chip | fits | all-gather GiB | "
            "reduce-scatter GiB | all-reduce GiB | est. step s | est. tokens/s/chip | est. MFU | compile s |",
            "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    slices, tasks = split_list(c.slices), split_list(c.tasks)
    for task in tasks:
        for name in slices:
            run = task_config(task, c.overrides)
            device, chips = plan.parse_device(name)
            validate(run, chips)
            source = resolve_model(run)
            fast = plan.plan(run, source.config, device, chips)
            settings = (f"remat {run.remat}, {run.grad_accum_steps} x "
                        f"{run.batch_size // run.grad_accum_steps // chips} rows/chip, seq {run.seq_len}")
            try:
                p = compiled_plan.compile_plan(run, source.config, device, chips)
            except compiled_plan.DoesNotFit as e:
                row = f"| {task} | {name} | {settings} | {fast.total / 2**30:.1f} | - | no: {e} | | | | | | | |"
                rows.append(row)
                print(row, flush=True)
                continue
            e = p.estimate()
            gib = lambda kind: p.collectives[kind].bytes / 2**30 if kind in p.collectives else 0.0  # noqa: E731
            settings = f"mesh {'x'.join(map(str, p.mesh))}, {settings}"
            row = (f"| {task} | {name} | {settings} | {fast.total / 2**30:.1f} | {p.peak_bytes / 2**30:.1f} | "
                   f"{'yes' if p.fits else 'no'} | {gib('all-gather'):.0f} | {gib('reduce-scatter'):.0f} | "
                   f"{gib('all-reduce'):.0f} | {p.step_cell(2)} | {e['tokens_per_second_per_chip']:,.0f} | "
                   f"{e['mfu']:.1%} | {p.compile_seconds:.0f} |")
            rows.append(row)
            print(row, flush=True)
    print("\n".join(["", *rows, "", "GiB/chip compiled: XLA's memory analysis (arguments + temporaries + outputs - "
                     "aliased + code). Step time, tokens/s and MFU: ESTIMATES (XLA's TPU cost model and ICI bytes), "
                     f"not measurements; {compiled_plan.PEAK_MARK_NOTE}."]))
    if c.search:
        run = task_config(tasks[0], c.overrides)
        device, chips = plan.parse_device(slices[0])
        source = resolve_model(run)
        done = compiled_plan.search(run, source.config, device, chips, c.search_limit)
        print(compiled_plan.search_table(done))
        winner = compiled_plan.best(done)
        print(f"best: {winner.flags()}" if winner else "none of the compiled candidates fits")
