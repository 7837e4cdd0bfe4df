"""A match head: the probability that an image and a text match, for re-ranking dense candidates.

The twin encoders score a pair by one cosine. :class:`MatchHead` reads the two unit vectors
the encoders already produce (so a collection's stored vectors serve as its input, and
re-ranking needs no image decoding) and adds a learned interaction to the cosine::

    logit(u, v) = (a * cos(u, v) + b + MLP([u * v, |u - v|, u, v])) / T

with the MLP's last layer zero-initialised, so training starts from a logistic regression on
the cosine. It is trained with binary cross-entropy on positive pairs and hard negatives mined
from an index of the current space (:func:`retrieval.mining.hard_negatives`); the temperature
``T`` is then fitted on held-out pairs (temperature scaling: Guo et al. 2017, "On Calibration
of Modern Neural Networks"), so :meth:`MatchHead.probabilities` is calibrated on pairs drawn
like those. :func:`expected_calibration_error` measures it (Naeini et al. 2015).

The head is kept beside a saved model (``<model>/match_head/``) and attached to the
:class:`~retrieval.model.TwinEncoder` at load time; it is not part of the model's fingerprint,
so a collection stays valid when a head is trained for its model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import MatchConfig
from retrieval.io import atomic_write_json, settle_file, staged_directory
from retrieval.mining import caption_positives, hard_negatives, image_positives

__all__ = [
    "MATCH_HEAD_DIR",
    "MatchHead",
    "MatchTrainResult",
    "calibrate_on_mined_pairs",
    "calibration_bins",
    "expected_calibration_error",
    "fit_match_head",
    "head_kind",
    "match_loss",
    "mined_pairs",
    "train_match_head",
    "train_on_mined_pairs",
]

MATCH_HEAD_DIR = "match_head"
_WEIGHTS = "match_head.safetensors"
_CONFIG = "match_head.json"


class MatchHead(nn.Module):
    """``(image vectors [B, D], text vectors [B, D]) -> match logits [B]`` (module docstring)."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.scale = nn.Parameter(torch.tensor(10.0))  # a: weight of the cosine
        self.bias = nn.Parameter(torch.tensor(-5.0))  # b
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("temperature", torch.tensor(1.0))  # T, fitted after training

    def uncalibrated(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits before temperature scaling, ``[B]``."""
        if image.shape != text.shape or image.ndim != 2 or image.shape[1] != self.dim:
            raise ValueError(
                f"match head takes image and text vectors of shape [B, {self.dim}]; received "
                f"{tuple(image.shape)} and {tuple(text.shape)}"
            )
        cos = (image * text).sum(-1)  # [B]
        features = torch.cat([image * text, (image - text).abs(), image, text], -1)  # [B, 4D]
        return self.scale * cos + self.bias + self.mlp(features).squeeze(-1)  # [B]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Calibrated logits ``[B]``."""
        return self.uncalibrated(image, text) / self.temperature

    @torch.no_grad()
    def probabilities(self, image: Any, text: Any) -> np.ndarray:
        """``[B]`` float32 match probabilities of the pairs ``(image[i], text[i])`` (vectors)."""
        param = self.scale
        u = torch.as_tensor(np.asarray(image, dtype=np.float32), device=param.device)
        v = torch.as_tensor(np.asarray(text, dtype=np.float32), device=param.device)
        if u.ndim == 1:
            u, v = u[None], v[None]
        return torch.sigmoid(self(u, v)).float().cpu().numpy()

    # --------------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the head to ``directory`` (replaced atomically)."""
        save_head(self, directory, {"kind": "pooled", "dim": self.dim, "hidden": self.hidden})

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> MatchHead:
        """Read a head written by :meth:`save`."""
        config = read_head_config(directory, "pooled")
        head = cls(int(config["dim"]), int(config["hidden"]))
        return load_head_weights(head, directory, device)


def save_head(head: nn.Module, directory: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write a head's JSON ``config`` (with its ``kind``) and weights to ``directory``, atomically."""
    from safetensors.torch import save_model

    with staged_directory(directory) as tmp:
        atomic_write_json(tmp / _CONFIG, config, indent=2)
        save_model(head, str(tmp / _WEIGHTS))
        settle_file(tmp / _WEIGHTS)


def head_kind(directory: str | os.PathLike[str]) -> str:
    """The ``kind`` of the head saved in ``directory``: "pooled" (:class:`MatchHead`; also for folders
    written before kinds were recorded) or "cross" (:class:`retrieval.match_cross.CrossMatchHead`)."""
    path = Path(directory) / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected a folder written by a match head's save()")
    return str(json.loads(path.read_text(encoding="utf-8")).get("kind", "pooled"))


def read_head_config(directory: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The JSON config of the head in ``directory``, checked to be of ``kind``."""
    found = head_kind(directory)
    if found != kind:
        raise ValueError(
            f"{directory} holds a {found!r} match head, not a {kind!r} one: load it with "
            "retrieval.match_cross.load_match_head, which picks the class by kind"
        )
    return dict(json.loads((Path(directory) / _CONFIG).read_text(encoding="utf-8")))


def load_head_weights(head: nn.Module, directory: str | os.PathLike[str], device: Any = None) -> Any:
    """``head`` with the weights saved in ``directory`` (strictly), on ``device``, in eval mode."""
    from safetensors.torch import load_model

    load_model(head, str(Path(directory) / _WEIGHTS), strict=True)
    return head.to(device or "cpu").eval()


def match_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits ``[B]`` against labels ``[B]`` (1 match, 0 not), mean over pairs.

    ``mean_i [-y_i log sigmoid(z_i) - (1 - y_i) log(1 - sigmoid(z_i))]``, computed stably.
    """
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def mined_pairs(
    image_vecs: np.ndarray,
    text_vecs: np.ndarray,
    captions: list[str],
    text_to_image: np.ndarray,
    pool: int,
    negatives: int,
    rng: np.random.Generator,
    mined: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Labelled pairs ``(image rows, text rows, labels)``: every caption with its image, and per caption and
    per image ``negatives`` drawn from its ``pool`` nearest non-matching items of the other modality.

    Returns the index neighbourhoods too (pass them back as ``mined`` to draw again without searching).
    """
    g = np.asarray(text_to_image, dtype=np.int64)
    if mined is None:
        t2i = hard_negatives(text_vecs, image_vecs, caption_positives(captions, g), pool)  # [T, pool]
        i2t = hard_negatives(image_vecs, text_vecs, image_positives(captions, g, len(image_vecs)), pool)
        mined = (t2i, i2t)
    t2i, i2t = mined
    img, txt, lab = [g], [np.arange(len(g))], [np.ones(len(g))]

    def draw(neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = [], []
        for q, near in enumerate(neighbours):
            near = near[near >= 0]
            if len(near):
                chosen = rng.choice(near, size=min(negatives, len(near)), replace=False)
                rows.extend([q] * len(chosen))
                cols.extend(chosen.tolist())
        return np.asarray(rows, np.int64), np.asarray(cols, np.int64)

    t_rows, i_cols = draw(t2i)  # caption t with a hard image
    img.append(i_cols)
    txt.append(t_rows)
    lab.append(np.zeros(len(t_rows)))
    i_rows, t_cols = draw(i2t)  # image i with a hard caption
    img.append(i_rows)
    txt.append(t_cols)
    lab.append(np.zeros(len(i_rows)))
    return np.concatenate(img), np.concatenate(txt), np.concatenate(lab).astype(np.float32), mined


@dataclasses.dataclass(frozen=True)
class MatchTrainResult:
    """What :func:`train_match_head` did."""

    head: MatchHead
    losses: list[float]  # mean training loss of each epoch
    temperature: float  # fitted on the validation pairs (1.0 without them)
    val_ece_before: float | None  # ECE of the validation pairs before temperature scaling
    val_ece: float | None  # and after


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _encode(model: Any, pairs: Any) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    from retrieval import encoding

    images = encoding.encode_images(model, pairs.images(), skip_broken=False, progress=False).vectors
    captions = list(pairs.captions())
    texts = encoding.encode_texts(model, captions, progress=False).vectors
    return _as_numpy(images), _as_numpy(texts), captions, np.asarray(pairs.text_to_image(), np.int64)


def train_match_head(
    model: Any, pairs: Any, config: MatchConfig | None = None, *, val_pairs: Any = None
) -> MatchTrainResult:
    """Train a :class:`MatchHead` for ``model`` on ``pairs`` (a :class:`retrieval.data.PairSet`).

    The twin encoders stay frozen: images and captions are encoded once, hard negatives are
    mined from an index of those vectors, and the head is fitted on positives plus negatives
    drawn afresh each epoch (:func:`fit_match_head`). With ``val_pairs``, the temperature is
    fitted on their mined pairs.
    """
    train = _encode(model, pairs)
    val = _encode(model, val_pairs) if val_pairs is not None else None
    return fit_match_head(train, config, val=val)


MatchData = tuple[
    np.ndarray, np.ndarray, list[str], np.ndarray
]  # images [I, D], texts [T, D], captions, t->i
PairLogits = Callable[[np.ndarray, np.ndarray], torch.Tensor]  # (image rows, text rows) -> logits [b]


def fit_match_head(
    train: MatchData, config: MatchConfig | None = None, *, val: MatchData | None = None
) -> MatchTrainResult:
    """Fit a :class:`MatchHead` on vectors already computed: ``(image vectors [I, D], caption vectors
    [T, D], captions, text_to_image [T])`` (e.g. read from a collection), optionally calibrated on ``val``."""
    config = config or MatchConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = MatchHead(train[0].shape[1], config.hidden)

    def logits_of(data: MatchData) -> PairLogits:
        u_all, v_all = torch.from_numpy(data[0]), torch.from_numpy(data[1])
        return lambda img, txt: head.uncalibrated(u_all[img], v_all[txt])  # [b]

    losses = train_on_mined_pairs(head, logits_of(train), train, config, rng)
    before = after = None
    if val is not None:
        before, after = calibrate_on_mined_pairs(head, logits_of(val), val, config, rng)
    return MatchTrainResult(head, losses, float(head.temperature), before, after)


def train_on_mined_pairs(
    head: nn.Module, logits_of: PairLogits, data: MatchData, config: Any, rng: np.random.Generator
) -> list[float]:
    """Train ``head`` with :func:`match_loss` on positives plus hard negatives drawn afresh each epoch
    (:func:`mined_pairs` on ``data``'s vectors; the index is searched once). ``logits_of(image rows,
    text rows)`` gives the head's uncalibrated logits of those pairs; ``config`` has ``pool``,
    ``negatives``, ``epochs``, ``batch_size``, ``lr`` and ``weight_decay``. Returns each epoch's mean
    loss; the head is left in eval mode."""
    image_vecs, text_vecs, captions, g = data
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    mined = None
    losses = []
    for _ in range(config.epochs):
        img, txt, lab, mined = mined_pairs(
            image_vecs, text_vecs, captions, g, config.pool, config.negatives, rng, mined
        )
        order = rng.permutation(len(lab))
        total, seen = 0.0, 0
        head.train()
        for s in range(0, len(order), config.batch_size):
            batch = order[s : s + config.batch_size]
            logits = logits_of(img[batch], txt[batch])  # [b]
            loss = match_loss(logits, torch.from_numpy(lab[batch]).to(logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        losses.append(total / max(1, seen))
    head.eval()
    return losses


def calibrate_on_mined_pairs(
    head: nn.Module, logits_of: PairLogits, data: MatchData, config: Any, rng: np.random.Generator
) -> tuple[float, float]:
    """Fit ``head.temperature`` on pairs mined from held-out ``data`` (as :func:`train_on_mined_pairs`
    draws them); returns their ECE ``(before, after)`` temperature scaling."""
    img, txt, lab, _ = mined_pairs(*data, config.pool, config.negatives, rng)
    with torch.no_grad():
        parts = [
            logits_of(img[s : s + config.batch_size], txt[s : s + config.batch_size]).float().cpu()
            for s in range(0, len(lab), config.batch_size)
        ]
    logits = torch.cat(parts) if parts else torch.zeros(0)  # [n]
    labels = torch.from_numpy(lab)
    before = expected_calibration_error(torch.sigmoid(logits).numpy(), lab)
    head.temperature.fill_(_fit_temperature(logits, labels))
    after = expected_calibration_error(torch.sigmoid(logits / float(head.temperature)).numpy(), lab)
    return before, after


def _fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the cross-entropy of ``logits / T`` (T = exp(t), LBFGS)."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = match_loss(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_bins(probabilities: Any, labels: Any, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: for each of ``n_bins`` equal-width probability bins, its count, mean
    predicted probability (confidence) and fraction of true matches (accuracy)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for b in range(n_bins):
        inside = which == b
        n = int(inside.sum())
        out.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": n,
                "confidence": float(p[inside].mean()) if n else float("nan"),
                "accuracy": float(y[inside].mean()) if n else float("nan"),
            }
        )
    return out


def expected_calibration_error(probabilities: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins
    (Naeini et al. 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning")."""
    bins = calibration_bins(probabilities, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"]) / total)
