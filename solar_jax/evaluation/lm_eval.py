"""lm-evaluation-harness adapter: importing this module registers the model `solar_jax`
(lm-eval's built-in models stay available beside it).

    python -m solar_jax.lm_eval --model solar_jax --model_args model_dir=HF_DIR_OR_RUN_DIR --batch_size 8 --tasks ...
    # in Python: import solar_jax.evaluation.lm_eval; lm_eval.simple_evaluate(model="solar_jax", model_args=...)

The three request kinds go to solar_jax.evaluation.lm.LanguageModel, which solar_jax.evaluate also
uses, so both give the same numbers on the same requests. lm-eval is an optional extra
(`pip install -e '.[eval]'`).
"""

from __future__ import annotations

# First: lm-eval fills its model registry with its own models only while the registry is
# empty, so registering ours before they are in would hide "hf" and the rest.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from solar_jax.evaluation.lm import LanguageModel
from solar_jax.evaluation.tasks import load_for_eval


@register_model("solar_jax")
class SolarJaxLM(LM):
    def __init__(self, model_dir: str, batch_size: int | str = 8, max_length: int | str | None = None,
                 dtype: str = "float32", **kwargs):
        super().__init__()

        model, tokenizer = load_for_eval(model_dir, dtype)
        batch = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.lm = LanguageModel(model, tokenizer, batch, int(max_length) if max_length else None)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.lm.loglikelihood([req.args for req in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.lm.loglikelihood_rolling([req.args[0] for req in requests])

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            out.append((context, until, int(gen_kwargs.get("max_gen_toks", 256))))
        return self.lm.generate_until(out)
