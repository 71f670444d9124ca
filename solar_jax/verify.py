"""python -m solar_jax.verify: solar_jax against transformers on one HF dir.

Prints the max |logit difference| on a real prompt and whether greedy generation gives the
same tokens; exits 1 when either check fails. Needs torch (the `test` extra).

  python -m solar_jax.verify --config.model_dir=HF_DIR
"""

from __future__ import annotations

import sys

from solar_jax import cli
from solar_jax.errors import SolarError
from solar_jax.evaluation.parity import verify


def main(c) -> None:
    if not c.model_dir:
        raise SolarError("model_dir is required (--config.model_dir=HF_DIR)")
    r = verify(c.model_dir, c.prompt, c.chat, c.max_new_tokens)
    ok = r["max_abs_logit_diff"] <= c.tolerance and r["greedy_equal"]
    print(f"logits: max |solar_jax - transformers| = {r['max_abs_logit_diff']:.2e} on {r['prompt_tokens']} tokens "
          f"(tolerance {c.tolerance:g})")
    print(f"greedy {c.max_new_tokens} tokens: {'identical' if r['greedy_equal'] else 'DIFFERENT'}: {r['text']!r}")
    print("verify: OK" if ok else "verify: FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cli.run(main, "verify.py")
