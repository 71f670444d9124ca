"""SOLAR's synthetic math sets from seeded templates (MetaMath-style rephrasing).

Each problem is an arithmetic word problem with a checkable answer `#### N`, generated with
an original question and a terse original answer, plus a rephrased question and a
rephrased, worked answer. As in the paper:
  Synth. Math-Instruct (SFT): rephrased question -> rephrased answer (Alpaca rows).
  Synth. Math-Alignment (DPO): prompt = rephrased question, chosen = rephrased answer,
    rejected = original answer.
The eval split is drawn first and shares no question with training.

    python -m solar_jax.synth_math --config.output_dir=OUT [--config.num_train=2000]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from solar_jax.errors import SolarError
from solar_jax.weights.outdir import atomic_output_dir

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam", "Mia",
         "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara")
ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "cards", "beads")


def _add_sub(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(5, 90), r.randint(2, 60)
    c = r.randint(1, a + b - 1)
    n = a + b - c
    return (("add_sub", name, item, a, b, c), n,
            f"{name} has {a} {item}. {name} buys {b} more and gives {c} to a friend. How many {item} does {name} have now?",
            f"{a} + {b} - {c} = {n}\n#### {n}",
            f"After starting with {a} {item}, {name} gets another {b} and then hands {c} to a friend. "
            f"What number of {item} does {name} end up with?",
            f"{name} starts with {a} {item}. Getting {b} more gives {a} + {b} = {a + b}. Handing {c} to a friend "
            f"leaves {a + b} - {c} = {n}. So {name} ends up with {n} {item}.\n#### {n}")


def _multiply(r: random.Random):
    item = r.choice(ITEMS)
    a, b = r.randint(3, 25), r.randint(2, 30)
    n = a * b
    return (("multiply", item, a, b), n,
            f"A box holds {a} {item}. How many {item} are in {b} boxes?",
            f"{a} * {b} = {n}\n#### {n}",
            f"There are {b} boxes, and every box contains {a} {item}. How many {item} are there altogether?",
            f"Each of the {b} boxes has {a} {item}, so the total is {b} x {a} = {n} {item}.\n#### {n}")


def _change(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 15), r.randint(2, 9)
    c = r.choice([x for x in (20, 50, 100, 200) if x > a * b] or [500])
    n = c - a * b
    return (("change", name, item, a, b, c), n,
            f"Each of the {item} costs ${a}. {name} buys {b} of them and pays with a ${c} bill. How much change does {name} get?",
            f"{c} - {a} * {b} = {n}\n#### {n}",
            f"{name} pays for {b} {item} at ${a} each using a ${c} bill. How many dollars should {name} get back?",
            f"The {item} cost {b} x ${a} = ${a * b}. Paying with ${c} gives ${c} - ${a * b} = ${n} in change.\n#### {n}")


def _share(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 20), r.randint(2, 12)
    total = a * b
    return (("share", name, item, a, b), a,
            f"{name} shares {total} {item} equally among {b} friends. How many {item} does each friend get?",
            f"{total} / {b} = {a}\n#### {a}",
            f"If {total} {item} are split evenly between {b} friends of {name}, how many {item} does one friend receive?",
            f"Splitting {total} {item} into {b} equal parts gives {total} / {b} = {a} {item} per friend.\n#### {a}")


def _rate(r: random.Random):
    item = r.choice(ITEMS)
    a, b, c = r.randint(4, 40), r.randint(2, 9), r.randint(1, 30)
    n = a * b + c
    return (("rate", item, a, b, c), n,
            f"A machine makes {a} {item} per hour. It runs for {b} hours and then makes {c} more. How many {item} did it make?",
            f"{a} * {b} + {c} = {n}\n#### {n}",
            f"Working {b} hours at {a} {item} an hour, a machine then produces {c} extra {item}. What is its total output?",
            f"In {b} hours the machine makes {b} x {a} = {a * b} {item}. Adding the {c} extra gives {a * b} + {c} = {n}.\n#### {n}")


FAMILIES: tuple[Callable[[random.Random], tuple], ...] = (_add_sub, _multiply, _change, _share, _rate)


def generate(num_train: int, num_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Unique problems: (train, eval), eval drawn first; no question appears in both."""
    if num_train < 1 or num_eval < 0:
        raise SolarError(f"num_train must be >= 1 and num_eval >= 0, got {num_train}, {num_eval}")
    r = random.Random(seed)
    seen, problems = set(), []
    attempts = 0
    while len(problems) < num_train + num_eval:
        attempts += 1
        if attempts > 50 * (num_train + num_eval) + 1000:
            raise SolarError(f"cannot generate {num_train + num_eval} distinct problems from the templates")
        key, answer, question, original_answer, rephrased_question, rephrased_answer = r.choice(FAMILIES)(r)
        if key in seen:
            continue
        seen.add(key)
        problems.append(dict(question=question, original_answer=original_answer,
                             rephrased_question=rephrased_question, rephrased_answer=rephrased_answer,
                             answer=str(answer), family=key[0]))
    return problems[num_eval:], problems[:num_eval]


def math_instruct(problems: list[dict]) -> list[dict]:
    """Synth. Math-Instruct: Alpaca rows (rephrased question -> rephrased answer)."""
    return [dict(instruction=p["rephrased_question"], input="", output=p["rephrased_answer"]) for p in problems]


def math_alignment(problems: list[dict]) -> list[dict]:
    """Synth. Math-Alignment: chosen = rephrased answer, rejected = original answer."""
    return [dict(prompt=p["rephrased_question"], chosen=p["rephrased_answer"], rejected=p["original_answer"])
            for p in problems]


def write_sets(output_dir: str, num_train: int, num_eval: int, seed: int, overwrite: bool = False) -> Path:
    train, held = generate(num_train, num_eval, seed)
    files = {
        "math_instruct_train.jsonl": math_instruct(train),
        "math_instruct_eval.jsonl": math_instruct(held),
        "math_alignment_train.jsonl": math_alignment(train),
        "math_alignment_eval.jsonl": math_alignment(held),
        "math_eval.jsonl": [dict(question=p["rephrased_question"], answer=p["answer"]) for p in held],
        "seed_problems.jsonl": train + held,
    }
    with atomic_output_dir(output_dir, overwrite) as tmp:
        for name, rows in files.items():
            (tmp / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Path(output_dir)
