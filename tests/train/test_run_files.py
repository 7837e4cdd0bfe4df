"""A training run's folders hold what was trained, not copies of the locked pretrained towers (the
units the adaptation phase unfroze are stored, the rest referenced), and every file is created with
the usual permissions."""

from __future__ import annotations

import os
import stat

from safetensors.torch import load_file

from retrieval.config import RECIPE_MODEL
from retrieval.model import TwinEncoder, build_model
from retrieval.train import train


def test_a_run_stores_the_heads_and_references_the_locked_tower(config):
    model = RECIPE_MODEL.replace(image_tower="efficientnet-lite0:64", text_tower="gru", vocab_size=120)
    previous = os.umask(0o022)
    try:
        result = train(
            config.replace(model=model, epochs=1, adapt_epochs=1, checkpoint_every=2, keep_checkpoints=2)
        )
    finally:
        os.umask(previous)
    run = result.run_dir
    folders = [run / "best", run / "final", *sorted((run / "checkpoints").glob("step-*/model"))]
    assert len(folders) >= 3
    assert result.phases[-1]["phase"] == "adapt"  # the default adapts the head conv after the heads
    pristine = build_model(model, captions=["a red circle"], device="cpu")
    for folder in folders:
        stored = load_file(str(folder / "model.safetensors"))
        tower = [name for name in stored if name.startswith("image_tower.")]
        assert stored and all(name.startswith("image_tower.head_conv.") for name in tower), folder
        loaded = TwinEncoder.load(folder, device="cpu").image_tower.state_dict()
        for name, tensor in pristine.image_tower.state_dict().items():
            expected = stored.get(f"image_tower.{name}", tensor)
            assert (expected == loaded[name]).all(), (folder, name)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert modes == {0o644}
