"""The run's metrics: one JSON object per line in ``metrics.jsonl``, and PNG plots of them.

Records carry ``"kind"``: ``"train"`` (step, epoch, loss, lr, logit scale, pairs/s) or ``"val"``
(step, epoch and the validation metrics, e.g. ``"t2i/R@1"``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from retrieval.io import atomic_write_bytes, atomic_write_text
from retrieval.train.state import LoopState
from retrieval.train.step import StepResult


def train_record(
    state: LoopState, result: StepResult, *, lr: float, logit_scale: float, steps_per_epoch: int
) -> dict[str, Any]:
    """The ``"train"`` record of the step that led to ``state``."""
    record = {
        "kind": "train",
        "step": state.step,
        "epoch": round(state.epoch + state.step_in_epoch / max(1, steps_per_epoch), 4),
        "loss": result.loss,
        "lr": lr,
        "logit_scale": logit_scale,
        "pairs": result.pairs,
        "pairs_per_s": result.pairs / max(result.seconds, 1e-9),
        "data_s": result.data_seconds,
        "compute_s": result.seconds - result.data_seconds,
    }
    if result.grad_norm is not None:
        record["grad_norm"] = result.grad_norm
    if result.skipped:
        record["skipped"] = result.skipped
    return record


class MetricsLog:
    """Append-only JSONL log; :meth:`truncate_after` drops records a resumed run will redo."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only records up to optimizer step ``step`` (inclusive)."""
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_history(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``loss.png`` (training loss per step, raw and smoothed) and, when there are validation
    records, ``recall.png`` (t2i/i2t R@K per epoch). Returns the files written."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    out_dir = Path(out_dir)
    written = []
    train = [r for r in records if r.get("kind") == "train" and math.isfinite(r.get("loss", math.nan))]
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot()
        ax.plot(steps, losses, alpha=0.35, label="loss")
        ax.plot(steps, _smooth(losses, max(1, len(losses) // 50)), label="smoothed")
        for r in records:
            if r.get("kind") == "val" and "val_loss" in r:
                ax.plot([r["step"]], [r["val_loss"]], "k.", label=None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / "loss.png"))
    val = [r for r in records if r.get("kind") == "val"]
    keys = sorted(
        {k for r in val for k in r if "/R@" in k}, key=lambda k: (k.split("/")[0], int(k.split("@")[1]))
    )
    if val and keys:
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot()
        x = [r.get("epoch", i + 1) for i, r in enumerate(val)]
        for key in keys:
            ax.plot(x, [r.get(key, math.nan) for r in val], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation recall")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(ncol=2, fontsize="small")
        written.append(_save(fig, out_dir / "recall.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
