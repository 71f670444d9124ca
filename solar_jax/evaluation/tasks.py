"""python -m solar_jax.evaluate: benchmark scores with lm-evaluation-harness definitions.

Tasks read local JSONL files (no hub): DATA_DIR/{task}.jsonl to score and, for few-shot
prompts, DATA_DIR/{task}_train.jsonl (a seeded sample of it). Rows use each benchmark's own
Hugging Face fields, so a `datasets` export is the file:
  arc_challenge   {question, choices: {text, label}, answerKey}     25-shot acc_norm
  hellaswag       {activity_label, ctx_a, ctx_b, endings, label}    10-shot acc_norm
  mmlu            {question, choices, answer, subject}               5-shot acc
  truthfulqa_mc2  {question, mc2_targets: {choices, labels}}         0-shot mc2
  winogrande      {sentence, option1, option2, answer}               5-shot acc (partial scoring)
  gsm8k           {question, answer ("... #### N")}                  5-shot exact_match (strict)
  synth_math      {question, answer}  (solar_jax.synth_math's held-out set)  exact_match
  multiple_choice {context, choices, gold}                           acc, acc_norm
  perplexity      {text}                                             word/byte perplexity, bits/byte
H6 = mean of the first six. Several models (comma-separated model_dir) give a side-by-side table.

  python -m solar_jax.evaluate --config=configs/eval.py --config.model_dir=HF_DIR \
      --config.tasks=arc_challenge,gsm8k --config.data_dir=benchmarks/
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.evaluation.lm import LanguageModel
from solar_jax.models import transformer as model_lib
from solar_jax.training.runs import load_params_any
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.parallel import sharding
from solar_jax.data.text import jsonl_rows
from solar_jax.weights import paths

FEWSHOT_DELIMITER = "\n\n"
GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>", "\n\n\n")
H6 = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k")
# lm-eval's truthfulqa few-shot preamble (six fixed QA pairs).
TQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
    "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.")


# ---- rows -> (context, choices, gold) in the harness's formats ----------------------------------

def _need(row: dict, where: str, *fields: str) -> None:
    for f in fields:
        if f not in row:
            raise SolarError(f"{where}: missing field {f!r}")


def fmt_arc(row, where):
    _need(row, where, "question", "choices", "answerKey")
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    if row["answerKey"] not in labels:
        raise SolarError(f"{where}: answerKey {row['answerKey']!r} is not among the labels {labels}")
    return f"Question: {row['question']}\nAnswer:", [f" {t}" for t in texts], labels.index(row["answerKey"])


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def fmt_hellaswag(row, where):
    _need(row, where, "activity_label", "ctx_a", "ctx_b", "endings", "label")
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return (_hellaswag_clean(row["activity_label"] + ": " + ctx), [" " + _hellaswag_clean(e) for e in row["endings"]],
            int(row["label"]))


def fmt_mmlu(row, where):
    _need(row, where, "question", "choices", "answer")
    letters = "ABCD"[: len(row["choices"])]
    body = row["question"].strip() + "\n" + "".join(f"{l}. {c}\n" for l, c in zip(letters, row["choices"]))
    return body + "Answer:", [f" {l}" for l in letters], int(row["answer"])


def mmlu_description(row) -> str:
    subject = str(row.get("subject", "")).replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""


def fmt_mc_generic(row, where):
    _need(row, where, "context", "choices", "gold")
    return row["context"], list(row["choices"]), int(row["gold"])


def fmt_tqa(row, where):
    _need(row, where, "question", "mc2_targets")
    t = row["mc2_targets"]
    return f"{TQA_PROMPT}\n\nQ: {row['question']}\nA:", [f" {c}" for c in t["choices"]], list(t["labels"])


def fmt_gsm8k(row, where):
    _need(row, where, "question", "answer")
    return f"Question: {row['question']}\nAnswer:", f" {row['answer']}", extract_answer(row["answer"]) or str(row["answer"])


# ---- answers ------------------------------------------------------------------------------------

_STRICT = re.compile(r"#### (\-?[0-9\.\,\$]+)")


def normalize_number(text: str) -> str:
    """'1,234' -> '1234', '$5' -> '5', '12.' -> '12', '7.50' stays."""
    text = text.strip().replace(",", "").replace("$", "")
    return text.rstrip(".")


def extract_answer(text: str) -> str | None:
    """GSM8K strict match: the number after '#### ', normalised; None when absent."""
    m = _STRICT.search(text)
    return normalize_number(m.group(1)) if m else None


# ---- tasks --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskDef:
    kind: str  # multiple_choice | mc2 | partial | generate | perplexity
    num_fewshot: int
    metric: str
    fmt: Callable | None = None


TASKS = {
    "arc_challenge": TaskDef("multiple_choice", 25, "acc_norm", fmt_arc),
    "hellaswag": TaskDef("multiple_choice", 10, "acc_norm", fmt_hellaswag),
    "mmlu": TaskDef("multiple_choice", 5, "acc", fmt_mmlu),
    "truthfulqa_mc2": TaskDef("mc2", 0, "mc2", fmt_tqa),
    "winogrande": TaskDef("partial", 5, "acc"),
    "gsm8k": TaskDef("generate", 5, "exact_match", fmt_gsm8k),
    "synth_math": TaskDef("generate", 0, "exact_match", fmt_gsm8k),
    "multiple_choice": TaskDef("multiple_choice", 0, "acc", fmt_mc_generic),
    "perplexity": TaskDef("perplexity", 0, "bits_per_byte"),
}


def fewshot_count(td: TaskDef, override: int | None) -> int:
    """The override applies to few-shot tasks only; zero-shot ones (truthfulqa_mc2's fixed
    preamble, perplexity) keep 0."""
    return td.num_fewshot if override is None or override < 0 or td.num_fewshot == 0 else override


def task_def(name: str) -> TaskDef:
    if name not in TASKS:
        raise SolarError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def read_task_file(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise SolarError(f"task file {path} does not exist")

    rows = list(jsonl_rows(path))
    if not rows:
        raise SolarError(f"task file {path} is empty")
    return rows


def fewshot_rows(name: str, data_dir: Path, k: int, seed: int) -> list[tuple[str, dict]]:
    if k == 0:
        return []
    path = data_dir / f"{name}_train.jsonl"
    rows = read_task_file(path)
    if k > len(rows):
        raise SolarError(f"num_fewshot={k} for {name} but its train split {path} has {len(rows)} rows")
    return random.Random(seed).sample(rows, k)


def _winogrande_parts(row, where):
    _need(row, where, "sentence", "option1", "option2", "answer")
    if "_" not in row["sentence"]:
        raise SolarError(f"{where}: sentence has no '_' blank")
    i = row["sentence"].index("_")
    contexts = [row["sentence"][:i] + row["option1"], row["sentence"][:i] + row["option2"]]
    return contexts, " " + row["sentence"][i + 1:].strip(), int(row["answer"]) - 1


def run_task(lm, name: str, data_dir: Path, num_fewshot: int | None = None, seed: int = 1234,
             limit: int = 0, max_gen_tokens: int = 256) -> dict[str, Any]:
    """Scores one task; returns its metrics with sample counts and settings."""
    td = task_def(name)
    k = fewshot_count(td, num_fewshot)
    rows = read_task_file(data_dir / f"{name}.jsonl")
    if limit:
        rows = rows[:limit]
    shots = fewshot_rows(name, data_dir, k, seed)
    result: dict[str, Any] = dict(samples=len(rows), num_fewshot=k)
    if td.kind in ("multiple_choice", "mc2"):
        prefix = "".join(_shot_text(td, r, w) + FEWSHOT_DELIMITER for w, r in shots)
        requests, spans, golds, lengths = [], [], [], []
        for where, row in rows:
            ctx, choices, gold = td.fmt(row, where)
            desc = mmlu_description(row) if name == "mmlu" else ""
            spans.append((len(requests), len(requests) + len(choices)))
            requests += [(desc + prefix + ctx, c) for c in choices]
            golds.append(gold)
            lengths.append([len(c) for c in choices])
        lls = [ll for ll, _ in lm.loglikelihood(requests)]
        per = [np.asarray(lls[a:b]) for a, b in spans]
        if td.kind == "mc2":
            result["mc2"] = float(np.mean([mc2_score(p, g) for p, g in zip(per, golds)]))
        else:
            result["acc"] = float(np.mean([int(np.argmax(p)) == g for p, g in zip(per, golds)]))
            result["acc_norm"] = float(np.mean([int(np.argmax(p / np.asarray(l))) == g
                                                for p, l, g in zip(per, lengths, golds)]))
    elif td.kind == "partial":
        prefix = "".join(_winogrande_full(r, w) + FEWSHOT_DELIMITER for w, r in shots)
        requests, golds = [], []
        for where, row in rows:
            contexts, continuation, gold = _winogrande_parts(row, where)
            requests += [(prefix + c, continuation) for c in contexts]
            golds.append(gold)
        lls = [ll for ll, _ in lm.loglikelihood(requests)]
        result["acc"] = float(np.mean([int(np.argmax(lls[2 * i:2 * i + 2])) == g for i, g in enumerate(golds)]))
    elif td.kind == "generate":
        prefix = "".join(_shot_text(td, r, w) + FEWSHOT_DELIMITER for w, r in shots)
        requests, golds = [], []
        for where, row in rows:
            ctx, _, gold = td.fmt(row, where)
            requests.append((prefix + ctx, GSM8K_STOPS, max_gen_tokens))
            golds.append(normalize_number(gold))
        outputs = lm.generate_until(requests)
        result["exact_match"] = float(np.mean([extract_answer(o) == g for o, g in zip(outputs, golds)]))
        result["examples"] = [dict(output=o, gold=g) for o, g in list(zip(outputs, golds))[:3]]
    elif td.kind == "perplexity":
        texts = []
        for where, row in rows:
            _need(row, where, "text")
            texts.append(row["text"])
        total = sum(lm.loglikelihood_rolling(texts))
        words = sum(len(re.split(r"\s+", t.strip())) for t in texts)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        result.update(word_perplexity=math.exp(-total / words), byte_perplexity=math.exp(-total / nbytes),
                      bits_per_byte=-total / nbytes / math.log(2))
    result["metric"] = td.metric
    result["score"] = result[td.metric]
    return result


def mc2_score(lls: np.ndarray, labels: Sequence[int]) -> float:
    """TruthfulQA mc2: the normalised probability mass on the true answers."""
    p = np.exp(np.asarray(lls, np.float64))
    labels = np.asarray(labels)
    return float(p[labels == 1].sum() / p.sum())


def _shot_text(td: TaskDef, row: dict, where: str) -> str:
    ctx, target, gold = td.fmt(row, where)
    if td.kind == "generate":
        return ctx + target
    return ctx + target[gold]


def _winogrande_full(row: dict, where: str) -> str:
    contexts, continuation, gold = _winogrande_parts(row, where)
    return contexts[gold] + continuation


# ---- models and the command -----------------------------------------------------------------------

def load_for_eval(path: str, dtype: str = "float32"):
    """An HF dir or a solar_jax run dir -> (Transformer, tokenizer)."""
    params, config, tokenizer_dir = load_params_any(path)
    model = model_lib.model_from_params(config, params, dtype=dtype)
    tokenizer = tokenizer_lib.load_tokenizer("", tokenizer_dir) if tokenizer_dir else None
    if tokenizer is None:
        raise SolarError(f"{path}: no tokenizer (the run's model had none)")
    return model, tokenizer


def evaluate_models(model_dirs: Sequence[str], tasks: Sequence[str], data_dir: str, *, batch_size: int = 8,
                    max_len: int = 0, num_fewshot: int = -1, seed: int = 1234, limit: int = 0,
                    dtype: str = "float32", mesh_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:

    for t in tasks:
        task_def(t)
    data = paths.local_copy(data_dir)  # a gs:// data dir: a local copy
    if not data.is_dir():
        raise SolarError(f"data_dir {data} does not exist")
    for t in tasks:  # check every file before loading a model
        read_task_file(data / f"{t}.jsonl")
        fewshot_rows(t, data, fewshot_count(TASKS[t], num_fewshot), seed)
    results: dict[str, Any] = dict(settings=dict(tasks=list(tasks), data_dir=str(data), batch_size=batch_size,
                                                 num_fewshot=num_fewshot, seed=seed, limit=limit), models={})
    mesh = None
    if mesh_shape is not None:

        mesh = sharding.make_mesh(*mesh_shape)
    for path in model_dirs:
        model, tokenizer = load_for_eval(path, dtype)
        lm = LanguageModel(model, tokenizer, batch_size, max_len or None, mesh)
        per = {t: run_task(lm, t, data, num_fewshot, seed, limit) for t in tasks}
        h6 = [per[t]["score"] for t in H6 if t in per]
        results["models"][path] = dict(tasks=per, **({"H6": float(np.mean(h6))} if len(h6) == len(H6) else {}))
    return results


def table(results: dict[str, Any]) -> str:
    models = list(results["models"])
    tasks = results["settings"]["tasks"]
    head = f"{'task':18s}{'metric':16s}" + "".join(f"{Path(m).name[-18:]:>20s}" for m in models)
    lines = [head, "-" * len(head)]
    for t in tasks:
        metric = TASKS[t].metric
        cells = "".join(f"{results['models'][m]['tasks'][t]['score']:20.4f}" for m in models)
        lines.append(f"{t:18s}{metric:16s}{cells}")
    if all("H6" in results["models"][m] for m in models):
        lines.append(f"{'H6':18s}{'mean':16s}" + "".join(f"{results['models'][m]['H6']:20.4f}" for m in models))
    return "\n".join(lines)
