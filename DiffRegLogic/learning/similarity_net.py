"""The learned similarity's network: a siamese CNN + transformer encoder from an image to an embedding.

One encoder (shared by the X-ray and the DRR, "siamese") maps a network
input (n, 1, S, S) (`data.network_input`: resized, standardised line
integrals) to ``n_outputs`` numbers, read by `so4.embedding` as

* ``"so4"`` (Chen & Kong): K pairs of unit quaternions (a point of SO(4)^K),
* ``"se3"`` (baseline): K 6-vectors (rotation vector, translation) in SO(3) x R^3,
* ``"euclidean"`` (ProST-style baseline): a plain vector of 8 K numbers,

and the distance between two images is `so4.distance_sq` of their embeddings
(`SimilarityNet.distance_sq`), summed over the K groups.

Architecture (chosen here; the paper's body is not available): a CNN stem of
``len(channels)`` stride-2 stages (3x3 convolutions, GroupNorm, SiLU), so a
64 px input becomes an 8 x 8 grid of tokens; a linear map to ``dim``, a
learnable 2D positional embedding, ``depth`` pre-norm transformer blocks
(multi-head self-attention written with matmuls, so that the second
derivative the gradient-matching loss needs exists on every backend), a
mean over the tokens and a linear head. SiLU/GELU rather than ReLU, so that
the image gradient of the distance is smooth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import InputError
from ..limits import check_number
from . import so4
from .configs import known_fields

__all__ = ["SimilarityNetConfig", "SimilarityNet"]


@dataclass(frozen=True)
class SimilarityNetConfig:
    """The encoder's shape (stored in the model file).

    ``image_size``: S, the input side (px; a multiple of 2**len(channels));
    ``embedding``: "so4" | "se3" | "euclidean"; ``groups``: K (so4: 8 K
    outputs, se3: 6 K, euclidean: 8 K numbers); ``channels``: the CNN stages;
    ``dim``, ``depth``, ``heads``: the transformer.
    """

    image_size: int = 64
    embedding: str = "so4"
    groups: int = 8
    channels: tuple[int, ...] = (16, 32, 64)
    dim: int = 64
    depth: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        if self.embedding not in so4.EMBEDDINGS:
            raise InputError(f"unknown embedding {self.embedding!r}; choose one of {', '.join(so4.EMBEDDINGS)}")
        check_number("groups", self.groups, 1, 256, integer=True)
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise InputError(f"channels must be positive integers, got {self.channels!r}")
        object.__setattr__(self, "channels", channels)
        stride = 2 ** len(channels)
        check_number("image_size", self.image_size, 2 * stride, 4096, integer=True)
        if self.image_size % stride:
            raise InputError(f"image_size must be a multiple of {stride} (2 ** the {len(channels)} CNN stages), got "
                             f"{self.image_size}; e.g. {stride * max(2, round(self.image_size / stride))}")
        check_number("dim", self.dim, 4, 4096, integer=True)
        check_number("depth", self.depth, 0, 64, integer=True)
        check_number("heads", self.heads, 1, 64, integer=True)
        if self.dim % self.heads:
            raise InputError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")

    @property
    def grid(self) -> int:
        """Tokens per side after the CNN stem."""
        return self.image_size // 2 ** len(self.channels)

    @property
    def n_outputs(self) -> int:
        """Numbers the head outputs: 8 K (so4, euclidean) or 6 K (se3)."""
        return self.groups * (6 if self.embedding == "se3" else 8)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SimilarityNetConfig":
        values = known_fields(cls, data, "similarity network config")
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        return cls(**values)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _Attention(nn.Module):
    """Multi-head self-attention with plain matmuls (twice differentiable everywhere)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm x); x + MLP(norm x)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SimilarityNet(nn.Module):
    """Siamese encoder: network inputs (n, 1, S, S) -> raw outputs (n, n_outputs); see the module docstring."""

    def __init__(self, config: SimilarityNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SimilarityNetConfig()
        layers, cin = [], 1
        for cout in config.channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU()]
            cin = cout
        self.stem = nn.Sequential(*layers)
        self.tokens = nn.Linear(cin, config.dim)
        self.position = nn.Parameter(torch.randn(1, config.grid ** 2, config.dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.n_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 1 or tuple(images.shape[-2:]) != (size, size):
            raise InputError(f"the similarity network takes (n, 1, {size}, {size}) inputs, got {tuple(images.shape)}; "
                             "use learning.data.network_input")
        features = self.stem(images)  # (n, C, g, g)
        x = self.tokens(features.flatten(2).transpose(1, 2)) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding of network inputs (n, 1, S, S): (n, K, 2, 4) | (n, K, 6) | (n, 8 K) (see `so4.embedding`)."""
        return so4.embedding(self(images), self.config.embedding)

    def distance_sq(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Squared embedding distance (...) between embeddings ``a`` and ``b`` (broadcast), summed over the groups."""
        return so4.distance_sq(a, b, self.config.embedding)

    def residual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Residual (..., M) with ||r||^2 == distance_sq(a, b)."""
        return so4.residual(a, b, self.config.embedding)
