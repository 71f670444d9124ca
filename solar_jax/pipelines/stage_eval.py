"""The three measures the recipe reports for every stage's model.

  held-out loss        mean next-token cross-entropy on the CPT corpus's held-out split (the
                       same batches the CPT run evaluates on)
  math exact match     greedy answers to held-out synthetic math questions, prompted with
                       the SFT template; the number after '#### ' must equal the answer
  preference accuracy  share of held-out Math-Alignment pairs whose chosen response has the
                       higher mean per-token log-probability than the rejected one (no
                       reference model, so every stage is scored the same way)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from solar_jax.data import sft_data
from solar_jax.evaluation.tasks import extract_answer, normalize_number
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.training.step import make_eval_step


@dataclasses.dataclass
class StageData:
    """What every stage is scored on, built once."""

    loss_batches: list[dict[str, np.ndarray]]  # CPT held-out batches (model inputs)
    math: list[dict]  # {question, answer}
    pairs: list[dict]  # {prompt, chosen, rejected}
    template: str
    max_new_tokens: int


def heldout_loss(model, batches: list[dict[str, np.ndarray]]) -> float:
    """Token-weighted cross-entropy of `model` (a Transformer) on the batches."""
    from flax import nnx


    graphdef, params = nnx.split(model)
    step = jax.jit(make_eval_step(graphdef))
    total = count = 0.0
    for b in batches:
        t, n, _ = step(params, {k: jax.numpy.asarray(v) for k, v in b.items()})
        total, count = total + float(t), count + float(n)
    return total / max(count, 1.0)


def math_prompt(question: str, template: str, tokenizer) -> str:
    return sft_data.render_prompt(sft_data.Prompt(messages=[dict(role="user", content=question)]), template,
                                  tokenizer)


def math_exact_match(lm, problems: list[dict], template: str, max_new_tokens: int) -> tuple[float, list[dict]]:
    """(exact match, the first answers) of greedy generations."""
    stops = ("### User:", "\n\n\n", "<|im_end|>")
    requests = [(math_prompt(p["question"], template, lm.tokenizer), stops, max_new_tokens) for p in problems]
    outputs = lm.generate_until(requests)
    hits = [extract_answer(o) == normalize_number(str(p["answer"])) for o, p in zip(outputs, problems)]
    examples = [dict(question=p["question"], output=o, answer=p["answer"]) for p, o in list(zip(problems, outputs))[:2]]
    return float(np.mean(hits)) if hits else 0.0, examples


def preference_accuracy(lm, pairs: list[dict], template: str) -> float:
    requests = []
    for p in pairs:
        prompt = math_prompt(p["prompt"], template, lm.tokenizer)
        requests += [(prompt, p["chosen"]), (prompt, p["rejected"])]
    encoded = [lm.encode_pair(c, x) for c, x in requests]
    scores = lm.score_tokens(encoded)
    mean = [ll / max(len(cont), 1) for (ll, _), (_, cont) in zip(scores, encoded)]
    return float(np.mean([mean[2 * i] > mean[2 * i + 1] for i in range(len(pairs))])) if pairs else 0.0


def evaluate_stage(model_dir: str, data: StageData, batch_size: int = 8) -> dict[str, Any]:
    model, tokenizer = load_for_eval(model_dir)
    lm = LanguageModel(model, tokenizer, batch_size)
    em, examples = math_exact_match(lm, data.math, data.template, data.max_new_tokens)
    return dict(heldout_loss=heldout_loss(model, data.loss_batches), math_exact_match=em,
                preference_accuracy=preference_accuracy(lm, data.pairs, data.template),
                num_layers=model.config.num_layers, examples=examples)
