"""The patient-specific pose-regression network (Zhang et al., MICCAI 2023 poster), part by part switchable.

``PoseNet(config)`` maps a network input (B, 1, S, S) (`learning.data.network_input`:
resized, per-image standardised line integrals) to the motion of the CT about
its centre relative to the reference view: a rotation (B, 3, 3) and a
translation (B, 3) in mm. Parts, as the poster names them:

* **A, backbone**: ``"efficientnet-b0"`` is MONAI's ``EfficientNetBNFeatures``
  (random weights, 1 input channel, BatchNorm); ``"small"`` is a plain
  conv net (5 stride-2 stages of two 3x3 convs, 16-32-64-96-128 channels,
  GroupNorm + SiLU), quick on a CPU and free of batch statistics, so a
  DistributedDataParallel gradient equals a single process's gradient on the
  combined batch. Both give 5 feature maps; the last, the bottleneck, is
  (B, C, S/32, S/32) (C = 320 for b0, 128 for small).
* **B, decoder** (``decoder``): a regularised autoencoder branch: from the
  bottleneck (plus the backbone's skip features if ``decoder_skips``; off by
  default, so the structure must pass through the bottleneck), five
  (bilinear x2, 3x3 conv, GroupNorm, SiLU) stages back to S x S, a 1x1 conv
  and a sigmoid: the predicted normalised Sobel magnitude of the input
  (`losses.sobel_magnitude`), ``PosePrediction.reconstruction``; None when off.
* **C, attention** (``attention``): the (S/32)^2 bottleneck tokens, projected
  to ``embed_dim``, plus (``positional_embedding``) a learnable 2D positional
  embedding, one parameter of shape (1, S/32, S/32, embed_dim) (a vector per
  token position, not separate row/column tables); then one post-norm
  transformer block: ``x = LN(x + MHA(x))``, ``x = LN(x + FFN(x))`` with
  ``heads`` heads; the tokens are averaged. Without attention the
  bottleneck is global-average-pooled. A positional embedding without
  attention would be a constant added before the pooling (no effect beyond a
  bias), so that configuration is refused.
* **head**: an MLP (Linear, SiLU, Dropout, Linear) to the rotation (6D,
  Gram-Schmidt, or quaternion, normalised; both as an offset from the
  identity's coordinates) and the translation: a linear output times
  ``max_translation_mm`` per axis (so the head predicts O(1) numbers, no tanh).
  The last layer starts at 1e-3 of its default scale with zero bias: the
  untrained network predicts (nearly) the identity and zero translation, the
  reference view.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from DiffRegLogic.errors import InputError
from DiffRegLogic.learning.configs import known_fields
from DiffRegLogic.learning.rotations import (IDENTITY_6D, IDENTITY_QUATERNION, quaternion_output_to_matrix,
                                             rotation_6d_to_matrix)

__all__ = ["BACKBONES", "ROTATIONS", "PoseNetConfig", "PosePrediction", "PoseNet", "count_parameters", "describe"]

BACKBONES = ("efficientnet-b0", "small")
ROTATIONS = ("6d", "quaternion")
_SMALL_CHANNELS = (16, 32, 64, 96, 128)
_B0_CHANNELS = (16, 24, 40, 112, 320)
_DECODER_CHANNELS = (128, 64, 32, 16, 16)


@dataclass(frozen=True)
class PoseNetConfig:
    """What `PoseNet` is built from; plain values only (``to_dict`` is JSON- and checkpoint-safe).

    image_size: side S (px) of the square network input, a multiple of 32, >= 32.
    backbone: "efficientnet-b0" (the poster's) or "small". decoder / attention /
    positional_embedding: parts B and C (positional_embedding needs attention).
    rotation: "6d" or "quaternion". heads: attention heads (divides embed_dim).
    max_translation_mm: per-axis scale (mm) of the translation output.
    dropout: in the attention block and the head, in [0, 1).
    embed_dim: token width of the attention block. hidden_dim: the head's hidden width.
    decoder_skips: the decoder also sees the backbone's skip features (U-Net style).
    """

    image_size: int = 128
    backbone: str = "efficientnet-b0"
    decoder: bool = True
    attention: bool = True
    positional_embedding: bool = True
    rotation: str = "6d"
    heads: int = 4
    max_translation_mm: tuple[float, float, float] = (60.0, 60.0, 60.0)
    dropout: float = 0.1
    embed_dim: int = 256
    hidden_dim: int = 256
    decoder_skips: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "heads", "embed_dim", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"PoseNetConfig.{name} must be a positive integer; got {value!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise InputError(f"PoseNetConfig.image_size must be a multiple of 32 and >= 32 (the backbone halves it "
                             f"5 times); got {self.image_size}: use e.g. 64 or 128")
        for name in ("decoder", "attention", "positional_embedding", "decoder_skips"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"PoseNetConfig.{name} must be true or false; got {getattr(self, name)!r}")
        if self.backbone not in BACKBONES:
            raise InputError(f"PoseNetConfig.backbone must be one of {BACKBONES}; got {self.backbone!r}")
        if self.rotation not in ROTATIONS:
            raise InputError(f"PoseNetConfig.rotation must be one of {ROTATIONS}; got {self.rotation!r}")
        if self.embed_dim % self.heads:
            raise InputError(f"PoseNetConfig.heads ({self.heads}) must divide embed_dim ({self.embed_dim})")
        if self.positional_embedding and not self.attention:
            raise InputError("PoseNetConfig: a positional embedding needs the attention block (attention=True); "
                             "with attention=False set positional_embedding=False too")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0.0 <= self.dropout < 1.0):
            raise InputError(f"PoseNetConfig.dropout must be a number in [0, 1); got {self.dropout!r}")
        scale = self.max_translation_mm
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = (scale,) * 3
        try:
            scale = tuple(float(v) for v in scale)
        except (TypeError, ValueError):
            scale = ()
        if len(scale) != 3 or not all(math.isfinite(v) and v > 0 for v in scale):
            raise InputError(f"PoseNetConfig.max_translation_mm must be 3 finite numbers > 0 (mm, per axis); "
                             f"got {self.max_translation_mm!r}")
        object.__setattr__(self, "max_translation_mm", scale)
        object.__setattr__(self, "dropout", float(self.dropout))

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) that `from_dict` turns back into an equal config."""
        d = asdict(self)
        d["max_translation_mm"] = list(self.max_translation_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PoseNetConfig":
        """Config from a dict of (some of) the fields; unknown keys or bad values raise InputError."""
        return cls(**known_fields(cls, d, "network config"))


@dataclass
class PosePrediction:
    """Network output: rotation (B, 3, 3), translation_mm (B, 3), reconstruction (B, 1, S, S) in [0, 1] or None."""

    rotation: torch.Tensor
    translation_mm: torch.Tensor
    reconstruction: torch.Tensor | None


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(_groups(cout), cout), nn.SiLU())


class SmallBackbone(nn.Module):
    """Five stride-2 stages (two 3x3 convs each, GroupNorm + SiLU).

    (B, 1, S, S) -> 5 feature maps (B, c_k, S/2^k, S/2^k), k = 1..5; the last is (B, 128, S/32, S/32).
    """

    def __init__(self, channels: tuple[int, ...] = _SMALL_CHANNELS) -> None:
        super().__init__()
        stages, cin = [], 1
        for c in channels:
            stages.append(nn.Sequential(_conv_block(cin, c, stride=2), _conv_block(c, c)))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


B0_BATCHNORM_MOMENTUM = 0.1
"""Momentum of the b0 backbone's BatchNorm running statistics (see `_build_backbone`)."""


def _build_backbone(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "small":
        return SmallBackbone(), _SMALL_CHANNELS
    from monai.networks.nets import EfficientNetBNFeatures  # lazy: importing MONAI takes seconds

    # BatchNorm momentum 0.1 (PyTorch's) instead of MONAI's 0.01: with 0.01 the running statistics that eval mode
    # uses still hold their initial values after a few hundred steps, and a short (CPU) run validates as untrained
    net = EfficientNetBNFeatures("efficientnet-b0", pretrained=False, progress=False, spatial_dims=2, in_channels=1,
                                 norm=("batch", {"eps": 1e-3, "momentum": B0_BATCHNORM_MOMENTUM}))
    return net, _B0_CHANNELS


class StructureDecoder(nn.Module):
    """Bottleneck (B, C, S/32, S/32) [+ skips] -> predicted normalised Sobel magnitude (B, 1, S, S) in (0, 1)."""

    def __init__(self, encoder_channels: tuple[int, ...], skips: bool) -> None:
        super().__init__()
        self.skips = skips
        cin = encoder_channels[-1]
        stages = []
        for i, c in enumerate(_DECODER_CHANNELS):
            extra = encoder_channels[-2 - i] if skips and i < len(encoder_channels) - 1 else 0
            stages.append(_conv_block(cin + extra, c))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i, stage in enumerate(self.stages):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if self.skips and i < len(features) - 1:
                x = torch.cat([x, features[-2 - i]], dim=1)
            x = stage(x)
        return torch.sigmoid(self.out(x))


class TokenAttention(nn.Module):
    """Bottleneck (B, C, h, w) -> pooled (B, D): 1x1 projection, [+ 2D positional embedding], one transformer block."""

    def __init__(self, channels: int, grid: int, dim: int, heads: int, dropout: float, positional: bool) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, dim, 1)
        self.position = nn.Parameter(torch.randn(1, grid, grid, dim) * 0.02) if positional else None
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Dropout(dropout),
                                          nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        tokens = self.project(bottleneck).permute(0, 2, 3, 1)  # (B, h, w, D)
        if self.position is not None:
            tokens = tokens + self.position
        x = tokens.flatten(1, 2)  # (B, h*w, D)
        attended, _ = self.attention(x, x, x, need_weights=False)
        x = self.norm1(x + self.drop(attended))
        x = self.norm2(x + self.drop(self.feed_forward(x)))
        return x.mean(dim=1)


class PoseNet(nn.Module):
    """The pose-regression network; see the module docstring for its parts. ``forward(images) -> PosePrediction``."""

    def __init__(self, config: PoseNetConfig | None = None) -> None:
        super().__init__()
        config = PoseNetConfig() if config is None else config
        if not isinstance(config, PoseNetConfig):
            raise InputError(f"PoseNet needs a PoseNetConfig; got {type(config).__name__}")
        self.config = config
        self.backbone, channels = _build_backbone(config.backbone)
        self.decoder = StructureDecoder(channels, config.decoder_skips) if config.decoder else None
        grid = config.image_size // 32
        if config.attention:
            self.attention = TokenAttention(channels[-1], grid, config.embed_dim, config.heads, config.dropout,
                                            config.positional_embedding)
            width = config.embed_dim
        else:
            self.attention = None
            width = channels[-1]
        rotation_size = 6 if config.rotation == "6d" else 4
        self.head = nn.Sequential(nn.Linear(width, config.hidden_dim), nn.SiLU(), nn.Dropout(config.dropout),
                                  nn.Linear(config.hidden_dim, rotation_size + 3))
        last = self.head[-1]
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.zero_()
        identity = IDENTITY_6D if config.rotation == "6d" else IDENTITY_QUATERNION
        self.register_buffer("rotation_offset", torch.tensor(identity), persistent=False)
        self.register_buffer("translation_scale", torch.tensor(config.max_translation_mm), persistent=False)

    def forward(self, images: torch.Tensor) -> PosePrediction:
        """images (B, 1, S, S), S = config.image_size (float; cast to the weights' dtype) -> PosePrediction."""
        s = self.config.image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, s, s):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"the model was trained at {s} x {s}; it needs images of shape (B, 1, {s}, {s}), got "
                             f"{shape}: pass the X-ray through learning.data.network_input(images, {s})")
        weight = self.head[-1].weight
        features = self.backbone(images.to(dtype=weight.dtype, device=weight.device))
        bottleneck = features[-1]
        pooled = self.attention(bottleneck) if self.attention is not None else bottleneck.mean(dim=(-2, -1))
        out = self.head(pooled)
        rotation_size = self.rotation_offset.shape[0]
        raw = out[:, :rotation_size] + self.rotation_offset
        if self.config.rotation == "6d":
            rotation = rotation_6d_to_matrix(raw)
        else:
            rotation = quaternion_output_to_matrix(raw)
        translation = out[:, rotation_size:] * self.translation_scale
        reconstruction = self.decoder(features) if self.decoder is not None else None
        return PosePrediction(rotation=rotation, translation_mm=translation, reconstruction=reconstruction)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of a module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(config: PoseNetConfig) -> str:
    """One line for logs.

    E.g. ``PoseNet[efficientnet-b0, 128 px, A+B+C(pos), rot 6d, 4 heads x 256, t +-60/60/60 mm, dropout 0.1]``.
    """
    parts = "A"
    if config.decoder:
        parts += "+B(skips)" if config.decoder_skips else "+B"
    if config.attention:
        parts += "+C(pos)" if config.positional_embedding else "+C(no pos)"
    t = "/".join(f"{v:g}" for v in config.max_translation_mm)
    heads = f"{config.heads} heads x {config.embed_dim}" if config.attention else "pooled"
    return (f"PoseNet[{config.backbone}, {config.image_size} px, {parts}, rot {config.rotation}, {heads}, "
            f"t +-{t} mm, dropout {config.dropout:g}]")
