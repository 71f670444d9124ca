"""What a run reports: metrics.jsonl, TensorBoard events, throughput/MFU, a loss-curve PNG."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import jax

from solar_jax.hardware.chips import CHIPS, chip_for_device_kind
from solar_jax.models.config import ModelConfig

# Peak dense bf16 FLOP/s by jax's device_kind prefix, for MFU (the chip table's). CPUs have no
# entry: MFU is not reported there.
PEAK_FLOPS = {kind: chip.peak_flops for chip in CHIPS.values() for kind in chip.device_kinds}


def device_peak_flops(device: Any = None) -> float | None:
    chip = chip_for_device_kind((device or jax.devices()[0]).device_kind)
    return chip.peak_flops if chip else None


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """6 N (weights: forward + backward) + 12 L T D_attn (attention scores and values), per token;
    N excludes the embedding lookup but counts the output projection."""
    counts = config.param_counts()
    n = sum(v for k, v in counts.items() if k != "embed") + (config.vocab_size * config.hidden_size
                                                             if config.tie_word_embeddings else 0)
    attn = 12 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 6 * n + attn


def _tensorboard_writer(logdir: Path):
    """tensorboardX's SummaryWriter, imported with torch hidden. tensorboardX imports torch
    wherever it is installed (to accept torch tensors, which a run never logs): ~3.5 s at every
    start on a host with torch (CI, many GPU hosts). Scalars need nothing from it."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(str(logdir))


class MetricsWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard, from process 0 only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            _drop_torn_last_line(self.path)
            self._file = open(self.path, "a", buffering=1)
            self._tb = _tensorboard_writer(Path(workdir) / "tensorboard")

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: (float(v) if v is not None else None) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        for k, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def _drop_torn_last_line(path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline: cut it off, so the
    resumed run's rows start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a step logged twice (a resumed run) keeps its last value. A line
    that does not parse (torn by a kill mid-write) is skipped: the file is a log."""
    rows: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, baseline: float | None = None,
                    title: str = "training loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label="base model eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
