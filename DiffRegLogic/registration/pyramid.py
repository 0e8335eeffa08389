"""The coarse-to-fine pyramid: a detector, X-ray and CT per level, shared by registration, experiments and the live preview.

A level with downsampling factor f renders a detector with f times fewer
pixels per side (same physical extent, `Detector.downsample`), compares with
the X-ray area-averaged to that size, and uses a CT averaged so that its
voxels are about as large as a detector pixel seen at the isocentre
(`volume_factor`, cached per CT by `DiffRegLogic.volume.downsample_cached`).

A multi-view registration (`DiffRegLogic.registration.views`) has one
`Level` per factor whose fields are view 1's and whose ``extra_views`` hold
the other views at that factor, each with its own detector, X-ray, mask, CT
pyramid and ``from_first`` = camera_k_from_camera_1 (4, 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry.detector import Detector
from ..volume.cache import downsample_cached
from ..volume.ct import Volume
from .parameters import source_to_center


@dataclass
class ViewLevel:
    """One view of a level: CT, detector, X-ray (H, W), mask (H, W) or None, and ``from_first`` (4, 4) or None.

    ``from_first`` is camera_k_from_camera_1 (mm; None = identity, view 1):
    the view's camera_from_world is ``from_first @ pose`` of view 1.
    """

    volume: Volume
    detector: Detector
    xray: torch.Tensor | None
    mask: torch.Tensor | None
    from_first: torch.Tensor | None = None

    def poses(self, first: torch.Tensor) -> torch.Tensor:
        """camera_from_world (B, 4, 4) of this view for view 1's poses ``first`` (B, 4, 4) (autograd kept)."""
        if self.from_first is None:
            return first
        return self.from_first.to(dtype=first.dtype, device=first.device) @ first


@dataclass
class Level:
    """One pyramid level: its factor, the CT, detector, X-ray (H, W) and mask (H, W) or None at that size.

    These fields are view 1's; ``extra_views`` holds views 2..V of a
    multi-view registration (empty for one X-ray).
    """

    factor: float
    volume: Volume
    detector: Detector
    xray: torch.Tensor | None
    mask: torch.Tensor | None
    extra_views: tuple[ViewLevel, ...] = ()

    @property
    def views(self) -> tuple[ViewLevel, ...]:
        """Every view of the level, view 1 first."""
        return (ViewLevel(self.volume, self.detector, self.xray, self.mask),) + tuple(self.extra_views)


def volume_factor(volume: Volume, detector: Detector, source_to_center: float) -> tuple[float, float, float]:
    """Per-axis CT downsampling so voxels are about the detector pixel size at the isocentre (never finer than the CT)."""
    pixel_at_iso = min(float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])) * source_to_center / float(detector.sdd)
    return tuple(max(1.0, math.floor(pixel_at_iso / float(s))) for s in volume.spacing)


def level_detector(detector: Detector, factor: float) -> Detector:
    """The detector of a level: ``factor`` times fewer pixels per side, same physical extent."""
    return detector.downsample(factor) if factor > 1 else detector


def resize_image(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """An (H, W) image area-averaged to ``shape`` (unchanged when it already has that shape)."""
    if tuple(image.shape) == tuple(shape):
        return image
    return F.interpolate(image[None, None], size=shape, mode="area")[0, 0]


def build_level(volume: Volume, detector: Detector, factor: float, source_to_center: float,
                xray: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> Level:
    """One `Level` (the X-ray and mask are area-averaged to the level's detector when given)."""
    det = level_detector(detector, factor)
    xr, mk = xray, mask
    if xray is not None and det.shape != tuple(xray.shape):
        xr = resize_image(xray, det.shape)
        mk = None if mask is None else resize_image(mask.to(xray.dtype), det.shape)
    vf = volume_factor(volume, det, source_to_center)
    return Level(factor, downsample_cached(volume, vf), det, xr, mk)


def build_levels(volume: Volume, xray: torch.Tensor, detector: Detector, mask: torch.Tensor | None, factors,
                 source_to_center: float) -> list[Level]:
    """The levels of a registration, coarse to fine (``factors`` as in `RegistrationOptions.levels`)."""
    return [build_level(volume, detector, factor, source_to_center, xray, mask) for factor in factors]


def build_view_levels(volume: Volume, views, factors) -> list[Level]:
    """Multi-view levels, coarse to fine (``factors`` as in `RegistrationOptions.levels`).

    ``views`` is a sequence of (xray (H, W), detector, mask (H, W) or None,
    from_first (4, 4) or None, source_to_center mm), view 1 first; each view
    gets its own detector, X-ray, mask and CT (sized by its own source
    distance) per factor.
    """
    levels = []
    for factor in factors:
        built = [build_level(volume, detector, factor, distance, xray, mask)
                 for xray, detector, mask, _, distance in views]
        extra = tuple(ViewLevel(b.volume, b.detector, b.xray, b.mask, view[3])
                      for b, view in zip(built[1:], views[1:]))
        first = built[0]
        levels.append(Level(factor, first.volume, first.detector, first.xray, first.mask, extra))
    return levels


def preview_level(volume: Volume, detector: Detector, pose: torch.Tensor, max_pixels: int) -> Level:
    """A cheap level for live previews: at most ``max_pixels`` per side, the CT averaged to that pixel size.

    It covers the same detector area as ``detector``, so a preview DRR
    overlays the full-size X-ray pixel for pixel once scaled.
    """
    factor = max(1.0, max(detector.shape) / max(1, int(max_pixels)))
    pose = torch.as_tensor(pose, dtype=torch.float64).cpu()
    distance = source_to_center(pose, volume.center.to(torch.float64).cpu())
    det = detector.downsample(factor)
    vf = volume_factor(volume, det, distance)
    return Level(factor, volume if vf == (1.0, 1.0, 1.0) else downsample_cached(volume, vf), det, None, None)
