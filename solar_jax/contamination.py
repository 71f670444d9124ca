"""python -m solar_jax.contamination: benchmark contamination checks of training data (and a model).

  python -m solar_jax.contamination --config.train_files=corpus/*.jsonl --config.benchmark_files=bench.jsonl \\
      [--config.model_dir=DIR]
"""

from __future__ import annotations

import json
from pathlib import Path

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.evaluation.contamination import model_checks, ngram_overlap, read_texts
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.evaluation.tasks import load_for_eval


def main(c) -> None:
    if not c.train_files or not c.benchmark_files:
        raise SolarError("train_files and benchmark_files are required")
    bench = read_texts(c.benchmark_files)
    if not bench:
        raise SolarError(f"no benchmark items in {c.benchmark_files}")
    report = dict(ngram=ngram_overlap(read_texts(c.train_files, c.text_field), bench, c.n))
    g = report["ngram"]
    print(f"{g['n']}-gram overlap: {g['flagged']} of {g['items']} benchmark items ({g['fraction']:.1%}) share an "
          f"n-gram with the training data")
    if c.model_dir:
        model, tok = load_for_eval(c.model_dir)
        m = model_checks(LanguageModel(model, tok, c.batch_size, c.max_len or None), bench[: c.limit or None],
                         c.num_neighbours, c.min_k, c.seed)
        report["model"] = m
        print(f"neighbourhood test: {m['neighbourhood_fraction_below']:.1%} of items score < {m['neighbourhood_threshold']}"
              f" (mean {m['neighbourhood_mean_score']:.3f}); Min-{int(c.min_k * 100)}% prob mean {m['min_k_prob_mean']:.3f}")
    if c.output_json:
        Path(c.output_json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    cli.run(main, "contamination.py")
