"""Python-docs QA: an instruction set built from the standard library's own docstrings.

A second skill for the merge-gain experiment (pipelines/merge_gain.py), unlike SOLAR's math
sets in what it asks (what a named function does, answered in the docstring's words) and
shipped with every Python: each public function, class and method of DOCS_MODULES with a
docstring gives one row {prompt: "What does `json.dumps` do in Python?", completion: the
docstring's first paragraph}. Deterministic for one Python version: names are walked in
sorted order, duplicate answers (aliases) are kept once, and a name goes to the held-out
split by a hash of the name, so the split never depends on which other names exist.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re

# Modules every CPython 3.11 has, with many documented names (no GUI, no network I/O).
DOCS_MODULES = (
    "builtins", "abc", "argparse", "array", "base64", "bisect", "calendar", "cmath", "codecs", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "html", "inspect", "io", "itertools", "json", "logging",
    "math", "operator", "os", "os.path", "pathlib", "pprint", "queue", "random", "re", "secrets", "shlex",
    "shutil", "statistics", "string", "struct", "tempfile", "textwrap", "threading", "time", "typing",
    "unicodedata", "urllib.parse", "uuid", "zlib",
)
QUESTIONS = ("What does `{name}` do in Python?", "Explain `{name}` from the Python standard library.",
             "In Python, what is `{name}` for?")
MAX_ANSWER_CHARS = 320  # a paragraph; longer ones are cut at the last sentence end before this


def first_paragraph(doc: str) -> str | None:
    """The docstring's first paragraph that is prose (not a bare signature line such as
    `dumps(obj, *, skipkeys=False)`), whitespace collapsed and cut to MAX_ANSWER_CHARS at a
    sentence end; None if there is none of at least 20 characters."""
    for para in re.split(r"\n\s*\n", doc.strip()):
        text = " ".join(para.split())
        if re.fullmatch(r"[\w.]+\(.*\)( -> .*)?", text) or len(text) < 20:
            continue
        if len(text) > MAX_ANSWER_CHARS:
            cut = text[:MAX_ANSWER_CHARS]
            end = max(cut.rfind(". "), cut.rfind(".\n"))
            text = cut[:end + 1] if end > 40 else cut.rsplit(" ", 1)[0] + " ..."
        return text
    return None


def _documented(module_name: str):
    """(qualified name, docstring) of the module's public functions, classes and the
    classes' own public methods, sorted by name."""
    module = importlib.import_module(module_name)
    prefix = "" if module_name == "builtins" else module_name + "."
    out = []
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", module_name) not in (module_name, None) and module_name != "builtins":
            continue  # re-exported from elsewhere: documented where it lives
        out.append((prefix + name, inspect.getdoc(obj) or ""))
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and (inspect.isroutine(member) or isinstance(member, (classmethod, staticmethod))):
                    out.append((f"{prefix}{name}.{attr}", inspect.getdoc(getattr(obj, attr)) or ""))
    return out


def held_out(name: str, eval_fraction: float) -> bool:
    digest = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < eval_fraction


def generate(eval_fraction: float = 0.1, modules=DOCS_MODULES) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), each {prompt, completion, name}."""
    seen: set[str] = set()
    train, held = [], []
    for module_name in modules:
        for name, doc in _documented(module_name):
            answer = first_paragraph(doc)
            if answer is None or answer in seen:
                continue
            seen.add(answer)
            question = QUESTIONS[int(hashlib.sha1(name.encode()).hexdigest()[8:10], 16) % len(QUESTIONS)]
            row = dict(prompt=question.format(name=name), completion=answer, name=name)
            (held if held_out(name, eval_fraction) else train).append(row)
    return train, held
