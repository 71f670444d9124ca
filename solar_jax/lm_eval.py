"""python -m solar_jax.lm_eval [lm-eval's own arguments]: lm-evaluation-harness's command line
with the model `solar_jax` registered, so every lm_eval flag works as documented there.

  python -m solar_jax.lm_eval --model solar_jax --model_args model_dir=HF_DIR_OR_RUN_DIR --batch_size 8 \\
      --tasks arc_challenge --include_path MY_TASKS/ --output_path results/

lm-eval 0.4 discovers no plugins: its plain `lm_eval` command does not know the name
`solar_jax`, which is why this command exists. Unlike the other commands it takes lm-eval's
flags, not an ml_collections config: it is lm-eval's CLI, unchanged. Needs the `eval` extra.
"""

from __future__ import annotations

import sys

from solar_jax.cli import fail

try:
    from lm_eval.__main__ import cli_evaluate

    from solar_jax.evaluation import lm_eval as _registers_the_adapter  # noqa: F401
except ImportError as e:  # the eval extra is optional
    cli_evaluate = None
    _missing = e.name


def main() -> None:
    if cli_evaluate is None:
        fail(f"python -m solar_jax.lm_eval needs lm-eval ({_missing} is missing): pip install -e '.[eval]'")
    sys.argv[0] = "python -m solar_jax.lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
