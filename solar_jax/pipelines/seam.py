"""python -m solar_jax.seam: seam diagnostics of one model on text (surgery/seam.py says what
is measured), written to OUT/seam.json, seam.md and seam.png.

The text is the built-in corpus (or data_files), tokenized, packed into num_sequences rows
of seq_len tokens; every real token counts (padding does not).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.evaluation.tasks import load_for_eval
from solar_jax.pipelines.recipe import resolve_model_dir
from solar_jax.surgery import seam
from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import text as text_lib
from solar_jax.weights.outdir import atomic_output_dir, check_output_dir, writes_output_dir


def text_batches(tokenizer, c) -> list[dict[str, np.ndarray]]:
    """num_sequences rows of seq_len tokens from data_files (or the built-in corpus), in
    batches of batch_size: inputs and segment_ids [B, T] (segment 0 = padding)."""
    if c.num_sequences <= 0 or c.seq_len <= 0 or c.batch_size <= 0:
        raise SolarError("num_sequences, seq_len and batch_size must be positive")
    if c.num_sequences % c.batch_size:
        raise SolarError(f"num_sequences ({c.num_sequences}) must be a multiple of batch_size ({c.batch_size})")
    if c.data_files:
        docs = text_lib.read_documents(text_lib.expand_files(c.data_files), c.text_field)
    else:
        docs = text_lib.builtin_documents(c.builtin)
    # Tokenize only what the rows need (x1.1 for the documents' last, shifted-off token).
    wanted, tokens, have = int(c.num_sequences * (c.seq_len + 1) * 1.1), [], 0
    for start in range(0, len(docs), 64):
        new = text_lib.tokenize_documents(docs[start:start + 64], tokenizer)
        tokens += new
        have += sum(len(t) for t in new)
        if have >= wanted:
            break
    if not tokens:
        raise SolarError(f"the text is empty ({c.data_files or c.builtin}): nothing to run the model on")
    batches = pretrain_lib.eval_batches(tokens, c.seq_len, c.batch_size, c.num_sequences // c.batch_size)
    return [{k: v for k, v in pretrain_lib.model_batch(b).items() if k in ("inputs", "segment_ids")} for b in batches]


@writes_output_dir
def run(c) -> dict[str, Any]:
    check_output_dir(c.output_dir, c.overwrite)
    model, tokenizer = load_for_eval(str(resolve_model_dir(c.model_dir)), c.dtype)
    n = model.config.num_layers
    target = seam.target_depth(n, c.target_layers, c.m)  # bad input: one line before any compute
    batches = text_batches(tokenizer, c)
    start = time.perf_counter()
    cos, tokens = seam.mean_cosines(model, batches)
    seconds = time.perf_counter() - start
    distance = seam.angular_distance(cos)
    rec = seam.recommend(distance, target)
    results = dict(model_dir=c.model_dir or "(the real model)", layers=n, tokens=tokens,
                   sequences=len(batches) * c.batch_size, seq_len=c.seq_len, seconds=seconds,
                   layer_change=seam.layer_change(cos).tolist(),
                   seam_mismatch={str(m): d for m, d in seam.seam_mismatch(distance).items()},
                   recommendation=vars(rec), distance=distance.tolist())
    with atomic_output_dir(c.output_dir, c.overwrite) as tmp:
        (tmp / "seam.json").write_text(json.dumps(results, indent=1) + "\n")
        (tmp / "seam.md").write_text(report(results) + "\n")
        plot(results, tmp / "seam.png")
    print(f"{n} layers, {tokens} tokens in {seconds:.1f} s; for {target} layers: {rec.reason}")
    print(f"wrote {Path(c.output_dir) / 'seam.json'}, seam.md, seam.png")
    return results


def report(results: dict[str, Any]) -> str:
    rec = results["recommendation"]
    change = results["layer_change"]
    quiet = sorted(range(len(change)), key=change.__getitem__)[:3]
    lines = [f"## Seam diagnostics ({results['layers']} layers, {results['tokens']} tokens)", "",
             f"For {rec['target_layers']} layers: {rec['reason']}.", "",
             "Layers that change the residual stream least (1 - cos(input, output)): "
             + ", ".join(f"{i} ({change[i]:.4f})" for i in quiet) + ".", "",
             "| m | layers | seam mismatch d(n - m, m) |", "|---:|---:|---:|"]
    n = results["layers"]
    for m, d in results["seam_mismatch"].items():
        lines.append(f"| {m} | {2 * (n - int(m))} | {d:.4f} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = results["layers"]
    rec = results["recommendation"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    im = axes[0].imshow(np.asarray(results["distance"]), origin="lower", cmap="viridis", vmin=0)
    axes[0].set_xlabel("layer input j")
    axes[0].set_ylabel("layer input i")
    axes[0].set_title("angular distance d(i, j)")
    axes[0].plot([rec["b"]], [rec["a"]], "r+", ms=12, label=f"recommended seam ({rec['slices']})")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.colorbar(im, ax=axes[0])
    axes[1].bar(range(n), results["layer_change"])
    axes[1].set_xlabel("layer")
    axes[1].set_title("1 - cos(input, output) per layer")
    ms = [int(m) for m in results["seam_mismatch"]]
    axes[2].plot(ms, list(results["seam_mismatch"].values()), "o-")
    if rec["solar_m"] is not None:
        axes[2].axvline(rec["solar_m"], color="gray", ls="--", label=f"m for {rec['target_layers']} layers")
        axes[2].legend()
    axes[2].set_xlabel("m (SOLAR: 2(n - m) layers)")
    axes[2].set_title("seam mismatch d(n - m, m)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
