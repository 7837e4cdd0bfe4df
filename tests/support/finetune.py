"""A short fine-tuning run from a pretrained model, as ``retrieval train --init`` makes one."""

from __future__ import annotations

from pathlib import Path

from retrieval.config import ModelConfig, TrainConfig
from retrieval.train import train


def fine_tune(init: str | Path, pairs: Path, out: Path, loss: str) -> Path:
    """Two optimizer steps from ``init`` with both towers training (``retrieval train --init``'s path);
    returns the run folder (its model is ``final/``)."""
    config = TrainConfig(
        train_data=str(pairs),
        out_dir=str(out),
        init_model=str(init),
        model=ModelConfig(lock_text=False),
        loss=loss,
        lr=1e-3,
        max_steps=2,
        batch_size=4,
        val_fraction=0.0,
        device="cpu",
        progress=False,
    )
    train(config)
    return out
