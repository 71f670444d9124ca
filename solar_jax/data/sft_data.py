"""Instruction-tuning and preference data: rows -> templated prompts -> masked token sequences.

Rows (JSON/JSONL/parquet): Alpaca {instruction, input?, output}, {prompt, completion}, or
chat {messages: [{role, content}, ...]} (the last assistant turn is the response). DPO rows:
{prompt, chosen, rejected} as strings, or chosen/rejected as message lists (Zephyr /
UltraFeedback-binarized: the prompt is every turn but the last).
Templates: "alpaca", "solar" (### User: / ### Assistant:), "chat" (the tokenizer's own).
The loss covers only response tokens (+ EOS). A sequence longer than seq_len + 1 tokens
keeps its prompt and loses the end of its response ("cut"); one whose prompt leaves no
room for a response token is dropped; both are counted and reported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import grain
import numpy as np

from solar_jax.data.pretrain import _read_options, batch_rows

from solar_jax.data.text import expand_files, jsonl_rows, read_parquet, read_text
from solar_jax.errors import SolarError
from solar_jax.data import synth_math
from solar_jax.data.text import split_eval

TEMPLATES = ("alpaca", "solar", "chat")
_ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
_ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                 "### Input:\n{input}\n\n### Response:\n")


@dataclasses.dataclass
class Prompt:
    messages: list[dict[str, str]]  # the turns before the response
    instruction: str | None = None  # Alpaca rows keep their fields for the Alpaca template
    input: str = ""


# ---- reading rows ------------------------------------------------------------------------------

def read_rows(spec: str) -> list[tuple[str, dict]]:
    """(where, row) for every row of the files; `where` is file:line for error messages."""
    rows = []
    for path in expand_files(spec):
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows += list(jsonl_rows(path))
        elif suffix == ".json":
            try:
                data = json.loads(read_text(path))
            except json.JSONDecodeError as e:
                raise SolarError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(data, list):
                raise SolarError(f"{path}: expected a JSON list of rows")
            rows += [(f"{path}[{i}]", r) for i, r in enumerate(data)]
        elif suffix == ".parquet":
            rows += [(f"{path}[{i}]", r) for i, r in enumerate(read_parquet(path).to_pylist())]
        else:
            raise SolarError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")
    for where, row in rows:
        if not isinstance(row, dict):
            raise SolarError(f"{where}: a row must be a JSON object")
    return rows


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        raise SolarError(f"{where}: {field} must be a non-empty list of {{role, content}} messages")
    return [dict(role=m["role"], content=m["content"]) for m in value]


def parse_sft_row(row: dict, where: str) -> tuple[Prompt, str]:
    if "messages" in row:
        msgs = _messages(row["messages"], where, "messages")
        if msgs[-1]["role"] != "assistant":
            raise SolarError(f"{where}: the last message must be the assistant's response")
        prompt, response = Prompt(msgs[:-1]), msgs[-1]["content"]
        if not prompt.messages:
            raise SolarError(f"{where}: messages has a response but no prompt")
    elif "instruction" in row and "output" in row:
        instruction, extra = str(row["instruction"]), str(row.get("input") or "")
        content = f"{instruction}\n\n{extra}" if extra else instruction
        prompt, response = Prompt([dict(role="user", content=content)], instruction, extra), row["output"]
    elif "prompt" in row and "completion" in row:
        prompt, response = Prompt([dict(role="user", content=str(row["prompt"]))]), row["completion"]
    else:
        raise SolarError(f"{where}: missing fields: a row needs instruction/output, prompt/completion or messages "
                         f"(has {', '.join(sorted(row)) or 'nothing'})")
    if not isinstance(response, str) or not response.strip():
        raise SolarError(f"{where}: empty response")
    return prompt, response


def parse_dpo_row(row: dict, where: str) -> tuple[Prompt, str, str]:
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise SolarError(f"{where}: missing field {missing[0]} (a DPO row needs prompt, chosen, rejected)")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        c_msgs, r_msgs = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        if c_msgs[:-1] != r_msgs[:-1]:
            raise SolarError(f"{where}: chosen and rejected must share every turn but the last")
        prompt_msgs = c_msgs[:-1] or ([dict(role="user", content=str(row["prompt"]))] if "prompt" in row else [])
        chosen, rejected = c_msgs[-1]["content"], r_msgs[-1]["content"]
    else:
        if "prompt" not in row:
            raise SolarError(f"{where}: missing field prompt (a DPO row needs prompt, chosen, rejected)")
        p = row["prompt"]
        prompt_msgs = _messages(p, where, "prompt") if isinstance(p, list) else [dict(role="user", content=str(p))]
    if not prompt_msgs:
        raise SolarError(f"{where}: no prompt")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise SolarError(f"{where}: empty {name} response")
    if chosen == rejected:
        raise SolarError(f"{where}: chosen and rejected are identical")
    return Prompt(prompt_msgs), chosen, rejected


# ---- templates ---------------------------------------------------------------------------------

def render_prompt(prompt: Prompt, template: str, tokenizer=None) -> str:
    """The text the model sees before the response."""
    if template == "alpaca":
        if prompt.instruction is not None:
            instruction, extra = prompt.instruction, prompt.input
        else:  # chat rows: earlier turns become context, the last user turn the instruction
            instruction, extra = prompt.messages[-1]["content"], "\n\n".join(
                f"{m['role']}: {m['content']}" for m in prompt.messages[:-1])
        return (_ALPACA_INPUT if extra else _ALPACA).format(instruction=instruction, input=extra)
    if template == "solar":
        names = {"user": "User", "assistant": "Assistant", "system": "System"}
        turns = "".join(f"### {names.get(m['role'], m['role'].title())}:\n{m['content']}\n\n" for m in prompt.messages)
        return turns + "### Assistant:\n"
    if template == "chat":
        hf = getattr(tokenizer, "hf", None)
        if hf is None or not getattr(hf, "chat_template", None):
            raise SolarError("template 'chat' needs a tokenizer with a chat template; use alpaca or solar")
        return hf.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    raise SolarError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise SolarError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


# ---- token sequences ---------------------------------------------------------------------------

@dataclasses.dataclass
class Counts:
    total: int = 0
    cut: int = 0  # the response lost its end to fit seq_len
    dropped: int = 0  # the prompt left no room for a response token
    empty_prompts: int = 0  # rows whose prompt has no text (trained as unconditional responses)

    def report(self, what: str) -> str:
        text = (f"{what}: {self.total - self.dropped} of {self.total} examples used; {self.cut} cut "
                f"(response truncated to fit seq_len), {self.dropped} dropped (prompt too long for seq_len)")
        return text + (f"; {self.empty_prompts} with an empty prompt" if self.empty_prompts else "")


def _count_empty_prompt(prompt: Prompt, counts: Counts) -> None:
    if not any(m["content"].strip() for m in prompt.messages):
        counts.empty_prompts += 1


def _check_prompts(counts: Counts, rows: list[tuple[str, dict]]) -> None:
    """Every prompt empty is a wrong field or a broken export, not data to train on."""
    if rows and counts.empty_prompts == len(rows):
        raise SolarError(f"every one of the {len(rows)} rows has an empty prompt (first: {rows[0][0]}); "
                         "check the files' prompt fields")


def encode_pair(prompt_text: str, response: str, template: str, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS). The chat template's text carries its own specials."""
    prompt_ids = tokenizer.encode_batch([prompt_text], add_special_tokens=template != "chat")[0]
    response_ids = tokenizer.encode_batch([response], add_special_tokens=False)[0] + [tokenizer.eos_id]
    return prompt_ids, response_ids


def make_sequence(prompt_ids: Sequence[int], response_ids: Sequence[int], seq_len: int,
                  counts: Counts) -> dict[str, np.ndarray] | None:
    """inputs/targets [n <= seq_len] and loss_mask (1 on targets that are response tokens)."""
    counts.total += 1
    room = seq_len + 1 - len(prompt_ids)
    if room < 1:
        counts.dropped += 1
        return None
    if len(response_ids) > room:
        counts.cut += 1
        response_ids = response_ids[:room]
    tokens = np.asarray(list(prompt_ids) + list(response_ids), np.int32)
    mask = np.zeros(len(tokens) - 1, np.int32)
    mask[len(prompt_ids) - 1:] = 1  # target i is token i+1: response tokens start at len(prompt)
    return dict(inputs=tokens[:-1], targets=tokens[1:], loss_mask=mask)


def sft_examples(rows: list[tuple[str, dict]], template: str, tokenizer, seq_len: int) -> tuple[list[dict], Counts]:
    check_template(template)
    counts, out = Counts(), []
    for where, row in rows:
        prompt, response = parse_sft_row(row, where)
        _count_empty_prompt(prompt, counts)
        seq = make_sequence(*encode_pair(render_prompt(prompt, template, tokenizer), response, template, tokenizer),
                            seq_len, counts)
        if seq is not None:
            out.append(seq)
    _check_prompts(counts, rows)
    return out, counts


def dpo_examples(rows: list[tuple[str, dict]], template: str, tokenizer, seq_len: int) -> tuple[list[dict], Counts]:
    """Each example: chosen_* and rejected_* sequences (same prompt)."""
    check_template(template)
    counts, out = Counts(), []
    for where, row in rows:
        prompt, chosen, rejected = parse_dpo_row(row, where)
        _count_empty_prompt(prompt, counts)
        text = render_prompt(prompt, template, tokenizer)
        c = make_sequence(*encode_pair(text, chosen, template, tokenizer), seq_len, counts)
        r = make_sequence(*encode_pair(text, rejected, template, tokenizer), seq_len, Counts())
        if c is not None and r is not None:
            out.append({**{f"chosen_{k}": v for k, v in c.items()}, **{f"rejected_{k}": v for k, v in r.items()}})
    _check_prompts(counts, rows)
    return out, counts


# ---- batches -------------------------------------------------------------------------------------

def pad_example(ex: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example per row, padded to seq_len: segment 1 on real tokens, 0 on padding."""
    out = {}
    for prefix in sorted({k.rsplit("inputs", 1)[0] for k in ex if k.endswith("inputs")}):
        n = len(ex[f"{prefix}inputs"])
        for field in ("inputs", "targets", "loss_mask"):
            arr = np.zeros(seq_len, np.int32)
            arr[:n] = ex[f"{prefix}{field}"]
            out[f"{prefix}{field}"] = arr
        seg = np.zeros(seq_len, np.int32)
        seg[:n] = 1
        out[f"{prefix}segment_ids"] = seg
    for k, v in ex.items():  # per-pair scalars (precomputed reference log-probs)
        if k.startswith("ref_"):
            out[k] = np.float32(v)
    return out


def _packed_to_model(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(inputs=b["inputs"], targets=b["targets"], segment_ids=b["inputs_segment_ids"], loss_mask=b["loss_mask"])


def train_dataset(examples: list[dict], seq_len: int, batch_size: int, seed: int, packing: bool,
                  num_threads: int = 0, prefetch: int = 0) -> grain.IterDataset:
    """Infinite global batches, shuffled per epoch (the same on every process, like
    data.train_dataset); SFT may pack (first-fit: an example is never split, each keeps
    its own mask), DPO pairs are padded."""
    ds = grain.MapDataset.source(examples)
    if len(ds) == 0:
        raise SolarError("no training examples")
    ds = ds.shuffle(seed=seed).repeat(None)
    if not packing:
        return ds.map(lambda ex: pad_example(ex, seq_len)).to_iter_dataset(
            _read_options(num_threads, prefetch)).batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(_read_options(num_threads, prefetch))
    packed = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len},
        num_packing_bins=batch_size, seed=seed)
    return packed.map(_packed_to_model).batch(batch_size, drop_remainder=True)


def eval_batches(examples: list[dict], seq_len: int, batch: int, max_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """Held-out examples, one per row, padded; the last batch padded with empty rows."""
    return batch_rows([pad_example(ex, seq_len) for ex in examples], batch, max_batches)


def to_model(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host batch -> step inputs: int32 tokens and segments, float32 masks."""
    floats = lambda k: k.endswith("loss_mask") or k.startswith("ref_")
    return {k: (v.astype(np.float32) if floats(k) else v.astype(np.int32)) for k, v in b.items()}


def load_split_rows(files: str, eval_files: str, eval_fraction: float, seed: int, builtin: str, kind: str,
                    num_builtin: int = 1000) -> tuple[list, list]:
    """Rows for training and eval: from files (eval held out unless eval_files), or the
    built-in synthetic math sets (Math-Instruct for sft, Math-Alignment for dpo)."""

    if files:
        train = read_rows(files)
        if not train:
            raise SolarError(f"the training data is empty ({files})")
        if eval_files:
            return train, read_rows(eval_files)
        return split_eval(train, eval_fraction, seed)
    if builtin != "synth_math":
        raise SolarError(f"unknown built-in dataset {builtin!r} for {kind}; known: synth_math")

    train_p, eval_p = synth_math.generate(num_builtin, max(8, num_builtin // 10), seed)
    make = synth_math.math_instruct if kind == "sft" else synth_math.math_alignment
    return ([(f"synth_math[{i}]", r) for i, r in enumerate(make(train_p))],
            [(f"synth_math_eval[{i}]", r) for i, r in enumerate(make(eval_p))])
