"""python -m solar_jax.train --config=configs/cpt.py[:variant] [--config.key=value ...]

Continued pretraining, SFT or DPO (configs/cpt.py, sft.py, dpo.py) on one host or many:
the library's train_and_evaluate does the run; this module starts jax.distributed when
the environment names a cluster, and prints the summary.
"""

from __future__ import annotations

from solar_jax import cli
from solar_jax.training.loop import _say, train_and_evaluate


def main(c) -> None:
    cli.start_distributed()  # before any backend starts
    result = train_and_evaluate(c, c.workdir)  # a diverged loss or a failed write: RunFailed, exit 1
    if result["status"] != "completed":
        return
    if result["loss"] is None:  # nothing left to run: the run had reached num_steps
        _say(f"done: the run in {result['workdir']} is already complete at step {result['step']}")
        return
    summary = f"done: step {result['step']}, loss {result['loss']:.4f}"
    if "eval_loss" in result:
        summary += f", eval loss {result['eval_loss']:.4f}"
    _say(summary)


if __name__ == "__main__":
    cli.run(main, "cpt.py", define=cli.define_distributed_flags, hugepage_malloc=True)
