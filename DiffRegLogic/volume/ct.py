"""CT volumes in RAS world coordinates.

A `Volume` holds the linear attenuation coefficient mu (1/mm) on a voxel
grid, as a tensor of shape (K, J, I) = (slices, rows, columns): the order
SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` use. Its
``affine`` (4, 4) maps continuous voxel indices (i, j, k, 1), voxel centres at
integers, to RAS millimetres. Any affine with a non-zero determinant works:
oblique direction matrices, anisotropic spacing, flipped axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .hu import HUToMu

_CHUNK_VOXELS = 1 << 21
"""Voxels converted from HU at a time (float64 work in pieces that stay in cache)."""


@dataclass(frozen=True)
class Volume:
    """Attenuation volume.

    Attributes:
        mu: (K, J, I) linear attenuation coefficient, 1/mm, floating point.
        affine: (4, 4) float64, continuous voxel index (i, j, k, 1) -> RAS mm.
        labels: optional (K, J, I) integer label map on the same grid (e.g.
            a segmentation); see `masked`.
    """

    mu: torch.Tensor
    affine: torch.Tensor
    labels: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        mu, affine = self.mu, self.affine
        if not isinstance(mu, torch.Tensor):
            raise InputError(f"volume data must be a torch tensor, got {type(mu).__name__}")
        if mu.ndim != 3:
            raise InputError(
                f"a CT volume must be 3D (K, J, I), got an array of shape {tuple(mu.shape)}; "
                "a 2D image is an X-ray, not a CT"
            )
        if min(mu.shape) < 2:
            raise InputError(
                f"a CT volume needs at least 2 voxels along every axis, got shape {tuple(mu.shape)} "
                "(a single slice cannot be ray-traced in 3D)"
            )
        if not mu.is_floating_point():
            raise InputError(f"volume data must be floating point, got {mu.dtype}")
        if not torch.isfinite(mu).all():
            bad = int((~torch.isfinite(mu)).sum())
            raise InputError(f"volume contains {bad} NaN or infinite voxels; fill or mask them before rendering")
        affine = torch.as_tensor(affine, dtype=torch.float64)
        if affine.shape != (4, 4) or not torch.isfinite(affine).all():
            raise InputError(f"volume affine must be a finite 4x4 matrix, got shape {tuple(affine.shape)}")
        if abs(float(torch.linalg.det(affine[:3, :3]))) < 1e-12:
            raise InputError("volume affine is singular: every voxel axis needs a non-zero spacing")
        object.__setattr__(self, "affine", affine.to(mu.device))
        if self.labels is not None:
            if tuple(self.labels.shape) != tuple(mu.shape):
                raise InputError(
                    f"label volume shape {tuple(self.labels.shape)} differs from the CT's {tuple(mu.shape)}; "
                    "resample the labels onto the CT grid first"
                )

    # ---- construction ------------------------------------------------------

    @classmethod
    def from_hu(cls, hu, affine, hu_to_mu: HUToMu | None = None, labels=None,
                dtype: torch.dtype = torch.float32) -> "Volume":
        """Volume from Hounsfield units (K, J, I) and an ijk->RAS affine."""
        hu = torch.as_tensor(hu)
        if hu.ndim != 3:
            raise InputError(
                f"a CT volume must be 3D (K, J, I), got an array of shape {tuple(hu.shape)}; "
                "a 2D image is an X-ray, not a CT"
            )
        conv = hu_to_mu or HUToMu()
        # converted in float64 a few slices at a time into the target dtype: the same numbers as one float64
        # pass over the whole CT, without float64 copies of it (a 512 x 512 x 133 CT: 3 s -> well under 1 s)
        mu = torch.empty(hu.shape, dtype=dtype, device=hu.device)
        bad = 0
        step = max(1, _CHUNK_VOXELS // max(1, hu.shape[1] * hu.shape[2]))
        for k in range(0, hu.shape[0], step):
            chunk = hu[k:k + step].to(torch.float64)
            finite = torch.isfinite(chunk)
            if not bool(finite.all()):
                bad += int((~finite).sum())
                continue
            mu[k:k + step] = conv(chunk).to(dtype)
        if bad:
            raise InputError(f"CT contains {bad} NaN or infinite voxels; fill or mask them before rendering")
        labels = None if labels is None else torch.as_tensor(labels)
        return cls(mu, torch.as_tensor(affine, dtype=torch.float64), labels)

    # ---- properties --------------------------------------------------------

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """(nI, nJ, nK) = number of columns, rows, slices."""
        k, j, i = self.mu.shape
        return (i, j, k)

    @property
    def spacing(self) -> torch.Tensor:
        """Voxel size along i, j, k in mm, (3,)."""
        return self.affine[:3, :3].norm(dim=0)

    @property
    def center(self) -> torch.Tensor:
        """RAS centre of the voxel grid (mm), (3,) float64: the natural pivot of rotations."""
        idx = torch.tensor([(n - 1) / 2.0 for n in self.shape_ijk] + [1.0], dtype=torch.float64, device=self.affine.device)
        return (self.affine @ idx)[:3]

    def index_to_world(self, ijk: torch.Tensor) -> torch.Tensor:
        """Continuous indices (..., 3) as (i, j, k) -> RAS mm (..., 3)."""
        a = self.affine.to(ijk.dtype)
        return ijk @ a[:3, :3].T + a[:3, 3]

    def world_to_index(self, ras: torch.Tensor) -> torch.Tensor:
        """RAS mm (..., 3) -> continuous indices (i, j, k) (..., 3)."""
        inv = torch.linalg.inv(self.affine).to(ras.dtype)
        return ras @ inv[:3, :3].T + inv[:3, 3]

    # ---- derived volumes ---------------------------------------------------

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Volume":
        """Copy to a device and/or floating dtype (the affine stays float64)."""
        labels = None if self.labels is None else self.labels.to(device)
        return Volume(self.mu.to(device=device, dtype=dtype), self.affine.to(device), labels)

    def masked(self, keep_labels) -> "Volume":
        """Volume with mu set to 0 outside the voxels whose label is in ``keep_labels``."""
        if self.labels is None:
            raise InputError("this volume has no label map; load one with DiffRegLogic.volume.read_volume(..., labels=PATH)")
        keep = torch.isin(self.labels, torch.as_tensor(list(keep_labels), device=self.labels.device))
        if not keep.any():
            raise InputError(f"no voxel carries any of the labels {list(keep_labels)}")
        return Volume(self.mu * keep, self.affine, self.labels)

    def downsample(self, factor: float | tuple[float, float, float]) -> "Volume":
        """Average-pool by ``factor`` (per axis i, j, k or one for all), keeping the world extent.

        The new grid covers exactly the same box in RAS: with s = old/new
        voxel counts along an axis, the new spacing is s times the old and the
        first voxel centre moves to old index (s - 1)/2. Labels are
        downsampled by nearest neighbour.
        """
        factors = (factor,) * 3 if isinstance(factor, (int, float)) else tuple(factor)
        if len(factors) != 3 or any(f < 1 for f in factors):
            raise InputError(f"downsampling factors must be >= 1, got {factor}")
        new_ijk = [max(2, int(round(n / f))) for n, f in zip(self.shape_ijk, factors)]
        new_kji = new_ijk[::-1]
        mu = torch.nn.functional.adaptive_avg_pool3d(self.mu[None, None], new_kji)[0, 0]
        scale = torch.tensor([n / m for n, m in zip(self.shape_ijk, new_ijk)], dtype=torch.float64, device=self.affine.device)
        step = torch.eye(4, dtype=torch.float64, device=self.affine.device)
        step[:3, :3] = torch.diag(scale)
        step[:3, 3] = (scale - 1) / 2
        labels = None
        if self.labels is not None:
            labels = torch.nn.functional.interpolate(self.labels[None, None].float(), size=new_kji, mode="nearest-exact")[0, 0]
            labels = labels.to(self.labels.dtype)
        return Volume(mu, self.affine @ step, labels)
