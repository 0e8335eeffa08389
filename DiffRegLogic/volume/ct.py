"""CT volumes in RAS world coordinates.

A `Volume` holds the linear attenuation coefficient mu (1/mm) on a voxel
grid, as a tensor of shape (K, J, I) = (slices, rows, columns): the order
SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` use. Its
``affine`` (4, 4) maps continuous voxel indices (i, j, k, 1), voxel centres at
integers, to RAS millimetres. Any affine with a non-zero determinant works:
oblique direction matrices, anisotropic spacing, flipped axes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..limits import MAX_VOLUME_VOXELS, VOXEL_SPACING_RANGE_MM, check_number
from .hu import HUToMu

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""Largest float32 (~3.4e38): CTs and X-rays are rendered in float32, so larger values are refused."""

_CHUNK_VOXELS = 1 << 21
"""Voxels converted from HU at a time (float64 work in pieces that stay in cache)."""


def check_values(array, name: str) -> None:
    """Refuse complex, NaN/infinite values and values beyond float32 in a numpy array as read, before any cast.

    ``name`` starts the message (e.g. ``"ct.nii: the CT"``).
    """
    if array.dtype.kind == "c":
        raise InputError(f"{name} holds complex numbers ({array.dtype}); save the real values (HU for a CT)")
    if array.dtype.kind != "f" or array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{name} has {int(array.size - np.count_nonzero(finite))} NaN or infinite value(s); "
                         "fill or fix them first")
    top = float(np.abs(array).max())
    if top > FLOAT32_MAX:
        raise InputError(f"{name} has values up to {top:.3g}, beyond float32's range (~3.4e38) that DiffReg works "
                         "in; rescale the values (e.g. to HU for a CT) and save them again")


def _as_tensor(value, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` as a tensor of numbers, or `InputError` naming ``name`` (strings, objects, ragged lists)."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{name} must be an array of numbers, got a {type(value).__name__}: {value!r:.60}")
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InputError(f"{name} must be an array of numbers, got {type(value).__name__} ({exc})") from None


def _check_voxels(shape) -> None:
    voxels = math.prod(int(n) for n in shape)
    if voxels > MAX_VOLUME_VOXELS:
        raise InputError(f"a CT of shape {tuple(shape)} has {voxels} voxels, more than the {MAX_VOLUME_VOXELS} "
                         "DiffReg renders; crop or downsample it first")


def _downsample_factors(factor) -> tuple[float, float, float]:
    """Three downsampling factors (i, j, k), each a finite number >= 1, from one number or three."""
    values = (factor,) * 3 if isinstance(factor, numbers.Real) else factor
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != 3:
        raise InputError(f"downsampling factor must be one number or three (i, j, k), each >= 1, got {factor!r}")
    return tuple(check_number(f"downsampling factor along {a}", f, 1.0) for a, f in zip("ijk", values))


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
            raise InputError(f"volume data mu must be a torch tensor, got {type(mu).__name__}; use torch.as_tensor, "
                             "or Volume.from_hu for a CT in Hounsfield units")
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
        _check_voxels(mu.shape)
        if not mu.is_floating_point():
            raise InputError(f"volume data mu must be floating point, got {mu.dtype}")
        finite = torch.isfinite(mu.detach())
        if not finite.all():
            bad = int((~finite).sum())
            raise InputError(f"volume contains {bad} NaN or infinite voxels; fill or mask them before rendering")
        affine = _as_tensor(affine, "volume affine", torch.float64)
        if affine.shape != (4, 4) or not torch.isfinite(affine).all():
            raise InputError(f"volume affine must be a finite 4x4 matrix (ijk -> RAS mm), got shape "
                             f"{tuple(affine.shape)}{'' if affine.shape != (4, 4) else ' with NaN or infinite entries'}")
        if not torch.allclose(affine[3].cpu(), torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9):
            raise InputError(f"volume affine's last row must be (0, 0, 0, 1), got {affine[3].tolist()}: "
                             "an affine maps (i, j, k, 1) to (x, y, z, 1)")
        if abs(float(torch.linalg.det(affine[:3, :3]))) < 1e-12:
            raise InputError("volume affine is singular: every voxel axis needs a non-zero spacing")
        low, high = VOXEL_SPACING_RANGE_MM
        for axis, spacing in zip("ijk", affine[:3, :3].norm(dim=0).tolist()):
            if not low <= spacing <= high:
                raise InputError(f"volume voxel spacing along {axis} (the norm of affine column {axis}) is "
                                 f"{spacing:g} mm, outside {low:g}..{high:g} mm; check the affine's units (mm)")
        object.__setattr__(self, "affine", affine.to(mu.device))
        if self.labels is not None:
            labels = _as_tensor(self.labels, "label volume")
            if tuple(labels.shape) != tuple(mu.shape):
                raise InputError(
                    f"label volume shape {tuple(labels.shape)} differs from the CT's {tuple(mu.shape)}; "
                    "resample the labels onto the CT grid first"
                )
            object.__setattr__(self, "labels", labels)

    # ---- construction ------------------------------------------------------

    @classmethod
    def from_hu(cls, hu, affine, hu_to_mu: HUToMu | None = None, labels=None,
                dtype: torch.dtype = torch.float32) -> "Volume":
        """Volume from Hounsfield units (K, J, I), real numbers, and an ijk->RAS affine (4, 4).

        ``hu_to_mu``: a `HUToMu` (default: the plain HU definition); ``dtype``:
        the floating dtype of mu. Raises `InputError` for anything
        `Volume` refuses, and before any conversion for more than
        `limits.MAX_VOLUME_VOXELS` voxels.
        """
        hu = _as_tensor(hu, "CT (HU)")
        if hu.ndim != 3:
            raise InputError(
                f"a CT volume must be 3D (K, J, I), got an array of shape {tuple(hu.shape)}; "
                "a 2D image is an X-ray, not a CT"
            )
        _check_voxels(hu.shape)
        if hu.is_complex() or hu.dtype == torch.bool:
            raise InputError(f"CT (HU) values must be real numbers, got {hu.dtype}")
        if hu_to_mu is not None and not isinstance(hu_to_mu, HUToMu):
            raise InputError(f"hu_to_mu must be a HUToMu (or None for the default), got {type(hu_to_mu).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InputError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
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
            if chunk.numel() and float(chunk.abs().max()) > FLOAT32_MAX:
                raise InputError(f"CT has values up to {float(chunk.abs().max()):.3g} HU, beyond float32's range "
                                 "(~3.4e38) that DiffReg works in; give the CT in Hounsfield units")
            mu[k:k + step] = conv(chunk).to(dtype)
        if bad:
            raise InputError(f"CT contains {bad} NaN or infinite voxels; fill or mask them before rendering")
        return cls(mu, _as_tensor(affine, "volume affine", torch.float64), labels)

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
        try:
            wanted = torch.as_tensor(list(keep_labels), device=self.labels.device)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"keep_labels must be a list of label numbers, got {keep_labels!r}") from None
        keep = torch.isin(self.labels, wanted)
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
        factors = _downsample_factors(factor)
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
