"""python -m solar_jax.evaluate: benchmark scores (lm-eval definitions) on local task files.

  python -m solar_jax.evaluate --config.model_dir=HF_DIR_OR_RUN_DIR[,DIR2,...] --config.data_dir=benchmarks/samples \\
      --config.tasks=arc_challenge,hellaswag,mmlu,truthfulqa_mc2,winogrande,gsm8k --config.output_json=results.json
"""

from __future__ import annotations

import json

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.evaluation.tasks import TASKS, evaluate_models, table
from solar_jax.weights import paths
from solar_jax.weights.outdir import output_path


def main(c) -> None:
    models = cli.split_list(c.model_dir)
    tasks = cli.split_list(c.tasks)
    if not models:
        raise SolarError("model_dir is required (--config.model_dir=DIR[,DIR2,...])")
    if not tasks:
        raise SolarError(f"tasks is required (--config.tasks=...; known: {', '.join(TASKS)})")
    results = evaluate_models(models, tasks, c.data_dir, batch_size=c.batch_size, max_len=c.max_len,
                              num_fewshot=c.num_fewshot, seed=c.seed, limit=c.limit, dtype=c.dtype,
                              mesh_shape=(c.mesh.data, c.mesh.fsdp, c.mesh.tensor))
    print(table(results))
    if c.output_json:  # local or gs://
        with paths.remote_errors(c.output_json):
            target = output_path(c.output_json)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {c.output_json}")


if __name__ == "__main__":
    cli.run(main, "eval.py")
