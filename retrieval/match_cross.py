"""A cross-attention match head: text tokens attend over image grid cells, for re-ranking dense candidates.

The pooled :class:`~retrieval.match.MatchHead` reads only the two unit vectors, so it cannot see
anything their cosine lacks. :class:`CrossMatchHead` reads what the towers pool: the image
tower's grid ``[N, C]`` (:meth:`~retrieval.towers.base.ImageTower.grid_features`) and the text
tower's tokens ``[L, H]`` (:meth:`~retrieval.towers.base.TextTower.token_features`)::

    g = Linear(LayerNorm(grid))                  # [N, W]
    t = Linear(LayerNorm(tokens))                # [L, W]
    repeat `layers` times (pre-norm):
        t = t + MultiheadAttention(LN(t), LN(g), LN(g))   # each token attends over the cells
        t = t + FFN(LN(t))
    z = masked mean of LN(t) over the caption's real tokens   # [W]
    logit = (a * cos(u, v) + b + MLP(z)) / T

where ``cos(u, v)`` is the twin encoder's cosine of the pair's unit vectors. Padding tokens are
queries only, and the mean leaves them out, so they never change a logit. The MLP's last layer
is zero-initialised: training starts from the logistic regression on the cosine, as
:class:`~retrieval.match.MatchHead` does (the attention design follows the cross-attention
fusion of e.g. Li et al. 2021, "Align before Fuse", reduced to one direction and a few layers).

Training is :class:`MatchHead`'s: the twin encoder stays frozen, the grid of every image and the
tokens of every caption are computed once (:func:`cross_features`), and the head is fitted with
the binary match loss on positives plus hard negatives mined from an index of the unit vectors
(:func:`retrieval.match.train_on_mined_pairs`), then temperature-scaled on held-out pairs.

Saved heads record ``"kind": "cross"`` in their JSON; :func:`load_match_head` reads either kind.
A cross head is kept in ``<model>/cross_match_head/`` (:data:`CROSS_MATCH_HEAD_DIR`), apart from
the pooled head that :class:`~retrieval.model.TwinEncoder` attaches at load time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.config import CrossMatchConfig
from retrieval.encoding import encode_grids, encode_images, encode_texts, encode_tokens, pick_device
from retrieval.match import (
    MatchHead,
    MatchTrainResult,
    calibrate_on_mined_pairs,
    head_kind,
    load_head_weights,
    read_head_config,
    save_head,
    train_on_mined_pairs,
)

__all__ = [
    "CROSS_MATCH_HEAD_DIR",
    "CrossFeatures",
    "CrossMatchHead",
    "CrossTrainResult",
    "cross_features",
    "cross_rerank",
    "cross_scores",
    "fit_cross_match_head",
    "load_match_head",
    "train_cross_match_head",
]

CROSS_MATCH_HEAD_DIR = "cross_match_head"
PROBABILITY_BATCH = 512  # pairs per forward pass in CrossMatchHead.probabilities


class _CrossBlock(nn.Module):
    """Pre-norm block: tokens attend over grid cells, then a feed-forward layer; both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = (
            nn.LayerNorm(width),
            nn.LayerNorm(width),
            nn.LayerNorm(width),
        )
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        cells = self.norm_kv(grid)  # [B, N, W]
        attended, _ = self.attention(self.norm_q(tokens), cells, cells, need_weights=False)  # [B, L, W]
        tokens = tokens + attended  # [B, L, W]
        return tokens + self.ff(self.norm_ff(tokens))  # [B, L, W]


class CrossMatchHead(nn.Module):
    """``(grid [B, N, C], tokens [B, L, H], token mask [B, L], cosine [B]) -> match logits [B]``
    (module docstring)."""

    def __init__(
        self,
        grid_dim: int,
        token_dim: int,
        width: int = 128,
        layers: int = 1,
        heads: int = 4,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.grid_dim, self.token_dim = int(grid_dim), int(token_dim)
        self.width, self.layers, self.heads, self.hidden = int(width), int(layers), int(heads), int(hidden)
        self.grid_in = nn.Sequential(nn.LayerNorm(grid_dim), nn.Linear(grid_dim, width))
        self.token_in = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, width))
        self.blocks = nn.ModuleList(_CrossBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.tensor(10.0))  # a: weight of the cosine (MatchHead's start)
        self.bias = nn.Parameter(torch.tensor(-5.0))  # b
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("temperature", torch.tensor(1.0))  # T, fitted after training

    def _check(self, grid: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor) -> None:
        b = grid.shape[0]
        if (
            grid.ndim != 3
            or grid.shape[2] != self.grid_dim
            or tokens.ndim != 3
            or tokens.shape[2] != self.token_dim
        ):
            raise ValueError(
                f"cross match head takes grid [B, N, {self.grid_dim}] and tokens [B, L, {self.token_dim}]; "
                f"received {tuple(grid.shape)} and {tuple(tokens.shape)}: compute them with the model "
                "the head was trained for"
            )
        if tokens.shape[0] != b or tuple(mask.shape) != tuple(tokens.shape[:2]) or tuple(cos.shape) != (b,):
            raise ValueError(
                f"cross match head takes B pairs: grid {tuple(grid.shape)}, tokens {tuple(tokens.shape)}, "
                f"mask {tuple(mask.shape)} (expected [B, L]), cosine {tuple(cos.shape)} (expected [B])"
            )

    def uncalibrated(
        self, grid: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor
    ) -> torch.Tensor:
        """Logits before temperature scaling, ``[B]``."""
        self._check(grid, tokens, mask, cos)
        g = self.grid_in(grid)  # [B, N, W]
        t = self.token_in(tokens)  # [B, L, W]
        for block in self.blocks:
            t = block(t, g)  # [B, L, W]
        weights = mask.to(t.dtype).unsqueeze(-1)  # [B, L, 1]
        pooled = (self.norm(t) * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B, W]
        return self.scale * cos + self.bias + self.mlp(pooled).squeeze(-1)  # [B]

    def forward(
        self, grid: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor
    ) -> torch.Tensor:
        """Calibrated logits ``[B]``."""
        return self.uncalibrated(grid, tokens, mask, cos) / self.temperature

    @torch.no_grad()
    def probabilities(self, grid: Any, tokens: Any, mask: Any, cos: Any) -> np.ndarray:
        """``[B]`` float32 match probabilities of the pairs ``(grid[i], tokens[i])`` (arrays or tensors),
        computed :data:`PROBABILITY_BATCH` pairs at a time."""
        device = self.scale.device
        grid, tokens = (
            torch.as_tensor(grid, dtype=torch.float32),
            torch.as_tensor(tokens, dtype=torch.float32),
        )
        mask, cos = torch.as_tensor(mask).bool(), torch.as_tensor(cos, dtype=torch.float32)
        out = []
        for s in range(0, len(cos), PROBABILITY_BATCH):
            part = slice(s, s + PROBABILITY_BATCH)
            logits = self(
                grid[part].to(device), tokens[part].to(device), mask[part].to(device), cos[part].to(device)
            )
            out.append(torch.sigmoid(logits).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    # --------------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the head to ``directory`` (replaced atomically), ``"kind": "cross"`` in its JSON."""
        config = {
            "kind": "cross",
            "grid_dim": self.grid_dim,
            "token_dim": self.token_dim,
            "width": self.width,
            "layers": self.layers,
            "heads": self.heads,
            "hidden": self.hidden,
        }
        save_head(self, directory, config)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> CrossMatchHead:
        """Read a head written by :meth:`save`."""
        c = read_head_config(directory, "cross")
        head = cls(c["grid_dim"], c["token_dim"], c["width"], c["layers"], c["heads"], c["hidden"])
        return load_head_weights(head, directory, device)


def load_match_head(
    directory: str | os.PathLike[str], device: str | torch.device | None = None
) -> MatchHead | CrossMatchHead:
    """The head saved in ``directory``, of the class its ``kind`` names ("pooled" or "cross")."""
    kinds: dict[str, Any] = {"pooled": MatchHead, "cross": CrossMatchHead}
    kind = head_kind(directory)
    if kind not in kinds:
        raise ValueError(
            f"{directory} holds a match head of unknown kind {kind!r}; expected one of {sorted(kinds)}"
        )
    return kinds[kind].load(directory, device=device)


@dataclasses.dataclass(frozen=True)
class CrossFeatures:
    """What the cross head reads for a set of image-caption pairs, computed once by the frozen model."""

    grid: torch.Tensor  # [I, N, C] float32 CPU: each image's grid cells
    tokens: torch.Tensor  # [T, L, H] float32 CPU: each caption's token features (zero at padding)
    mask: torch.Tensor  # [T, L] bool: real tokens
    image_vecs: np.ndarray  # [I, D] float32 unit vectors of the twin encoder
    text_vecs: np.ndarray  # [T, D] float32 unit vectors
    captions: list[str]  # [T]
    text_to_image: np.ndarray  # [T] int64: the image row of each caption

    def vectors(self) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """``(image vectors, caption vectors, captions, text_to_image)``: what hard negatives are mined from."""
        return self.image_vecs, self.text_vecs, self.captions, self.text_to_image

    def pairs(
        self, image_rows: np.ndarray, text_rows: np.ndarray, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(grid [b, N, C], tokens [b, l, H], mask [b, l], cosine [b])`` of the pairs
        ``(image_rows[i], text_rows[i])``, tokens cut to the longest caption among them."""
        img, txt = torch.as_tensor(image_rows, dtype=torch.long), torch.as_tensor(text_rows, dtype=torch.long)
        mask = self.mask[txt]  # [b, L]
        length = max(1, int(mask.sum(1).max())) if len(txt) else 1
        cos = (self.image_vecs[image_rows] * self.text_vecs[text_rows]).sum(-1)  # [b]
        return (
            self.grid[img].to(device),
            self.tokens[txt, :length].to(device),
            mask[:, :length].to(device),
            torch.from_numpy(np.ascontiguousarray(cos, dtype=np.float32)).to(device),
        )


def cross_features(
    model: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    text_to_image: Any,
    *,
    image_vecs: Any = None,
    text_vecs: Any = None,
    device: str | torch.device | None = None,
) -> CrossFeatures:
    """The frozen ``model``'s grid of every image and tokens of every caption (one pass each), with
    the unit vectors: given (e.g. read from a collection) or encoded here (a second pass)."""
    grid = encode_grids(model, images, device=device)  # [I, N, C]
    tokens, mask = encode_tokens(model, list(captions), device=device)  # [T, L, H], [T, L]
    if image_vecs is None:
        image_vecs = encode_images(model, images, device=device).vectors
    if text_vecs is None:
        text_vecs = encode_texts(model, list(captions), device=device).vectors
    u, v = _float_array(image_vecs), _float_array(text_vecs)
    g = np.asarray(text_to_image, dtype=np.int64)
    if len(u) != len(grid) or len(v) != len(tokens) or len(g) != len(tokens):
        raise ValueError(
            f"cross_features received {len(images)} images with {len(u)} vectors and {len(captions)} captions "
            f"with {len(v)} vectors and {len(g)} text_to_image rows: give one vector per item"
        )
    return CrossFeatures(grid, tokens, mask, u, v, list(captions), g)


def _float_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


@dataclasses.dataclass(frozen=True)
class CrossTrainResult(MatchTrainResult):
    """What :func:`fit_cross_match_head` did (``head`` is a :class:`CrossMatchHead`)."""


def fit_cross_match_head(
    train: CrossFeatures,
    config: CrossMatchConfig | None = None,
    *,
    val: CrossFeatures | None = None,
    device: str | torch.device | None = None,
) -> CrossTrainResult:
    """Fit a :class:`CrossMatchHead` on features already computed (:func:`cross_features`), optionally
    calibrated on ``val``; on ``device`` (default: CUDA when present, else the CPU)."""
    config = config or CrossMatchConfig()
    target = pick_device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = CrossMatchHead(
        train.grid.shape[2], train.tokens.shape[2], config.width, config.layers, config.heads, config.hidden
    ).to(target)

    def logits_of(features: CrossFeatures) -> Any:
        return lambda img, txt: head.uncalibrated(*features.pairs(img, txt, target))  # [b]

    losses = train_on_mined_pairs(head, logits_of(train), train.vectors(), config, rng)
    before = after = None
    if val is not None:
        before, after = calibrate_on_mined_pairs(head, logits_of(val), val.vectors(), config, rng)
    return CrossTrainResult(head, losses, float(head.temperature), before, after)


def train_cross_match_head(
    model: Any, pairs: Any, config: CrossMatchConfig | None = None, *, val_pairs: Any = None
) -> CrossTrainResult:
    """Train a :class:`CrossMatchHead` for ``model`` on ``pairs`` (a :class:`retrieval.data.PairSet`),
    temperature-scaled on ``val_pairs`` when given; the model stays frozen."""

    def features(p: Any) -> CrossFeatures:
        return cross_features(model, p.images(), list(p.captions()), p.text_to_image())

    val = features(val_pairs) if val_pairs is not None else None
    return fit_cross_match_head(features(pairs), config, val=val, device=getattr(model, "device", None))


def cross_scores(head: CrossMatchHead, features: CrossFeatures, top: Any, query_is_text: bool) -> np.ndarray:
    """``[Q, n]`` float32 match probabilities of each query row with its candidate rows ``top [Q, n]``
    (caption rows of ``features`` as queries and image rows as candidates when ``query_is_text``,
    the other way round otherwise); ``-1`` candidates (padding) get ``-inf``."""
    top = np.asarray(top, dtype=np.int64)
    valid = top >= 0  # [Q, n]
    queries = np.repeat(np.arange(len(top)), top.shape[1])[valid.reshape(-1)]  # [m]
    candidates = top[valid]  # [m]
    img, txt = (candidates, queries) if query_is_text else (queries, candidates)
    probs = np.full(top.shape, -np.inf, dtype=np.float32)
    probs[valid] = head.probabilities(*features.pairs(img, txt))
    return probs


def cross_rerank(
    head: CrossMatchHead, features: CrossFeatures, top: Any, query_is_text: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's candidates ``top [Q, n]`` (rows of ``features``, best dense first, ``-1``
    padded) by the head's match probability: ``(rows [Q, n], probabilities [Q, n])``, best first. The
    set of candidates of every query is unchanged (ties keep the dense order; padding stays last)."""
    probs = cross_scores(head, features, top, query_is_text)  # [Q, n]
    order = np.argsort(-probs, axis=1, kind="stable")  # [Q, n]
    return np.take_along_axis(np.asarray(top, np.int64), order, 1), np.take_along_axis(probs, order, 1)
