"""The initialiser plug point: where the start poses of a registration come from.

An initialiser is any callable ``(xray, detector, volume) -> (K, 4, 4)``
returning K camera_from_world hypotheses (float64); K > 1 hypotheses feed the
multi-start (all are optimised on the coarsest level and the best goes on).
``xray`` is what the registration registers (an `XRay` or its (H, W)
image); an initialiser that does not look at it (a fixed pose, C-arm
angles) may ignore it. Implementations here:

* `FixedPose`: a pose (or several) given explicitly, e.g. read from a pose JSON file;
* `ClinicalAngles`: LAO/RAO and CRA/CAU angles and the source-to-isocentre
  distance (from DICOM with `ClinicalAngles.from_xray`), about the CT centre
  unless another isocentre is given;
* `RandomStarts`: another initialiser's first pose plus seeded random
  rigid motions about the CT centre.

The Slicer bridge adds one that reads a transform node
(`DiffRegLogic.mrml.poses.TransformInitializer`); a pose-regression network
is another (`DiffRegLogic.learning`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from ..errors import InputError
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..geometry.rigid import check_pose
from ..volume.ct import Volume


@runtime_checkable
class Initializer(Protocol):
    """``(xray, detector, volume) -> (K, 4, 4)`` start poses (see the module docstring)."""

    def __call__(self, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor: ...


@dataclass(frozen=True)
class FixedPose:
    """The pose(s) given: ``pose`` (4, 4) or (K, 4, 4) camera_from_world."""

    pose: Any

    def __call__(self, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor:
        return check_pose(self.pose, name="initial pose").to(torch.float64).cpu()


@dataclass(frozen=True)
class ClinicalAngles:
    """Clinical C-arm angles (deg, LAO+ / CRA+) and source-to-isocentre distance (mm), as DICOM XA/RF store them.

    ``isocenter`` (RAS mm, 3 numbers) is the point the principal ray passes
    through; ``None`` = the CT's centre.
    """

    primary_deg: float
    secondary_deg: float
    source_to_isocenter_mm: float
    isocenter: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if not (float(self.source_to_isocenter_mm) > 0):
            raise InputError(f"the source-to-isocentre distance must be positive (mm), got {self.source_to_isocenter_mm}")

    @classmethod
    def from_xray(cls, xray, isocenter: Sequence[float] | None = None) -> "ClinicalAngles":
        """The angles an `XRay` read from DICOM carries; InputError naming the missing tags otherwise."""
        if getattr(xray, "clinical", None) is None:
            xray.initial_pose(isocenter if isocenter is not None else (0.0, 0.0, 0.0))  # raises the tag message
        primary, secondary, distance = xray.clinical
        return cls(primary, secondary, distance, isocenter)

    def __call__(self, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor:
        iso = volume.center.to(torch.float64).cpu() if self.isocenter is None else self.isocenter
        return clinical_to_pose(self.primary_deg, self.secondary_deg, self.source_to_isocenter_mm, iso,
                                dtype=torch.float64).reshape(1, 4, 4)


@dataclass(frozen=True)
class RandomStarts:
    """``base``'s first pose, then ``n - 1`` seeded random motions of the CT about its centre around it.

    Each rotation-vector component is uniform in +-``max_rotation_deg``, each
    translation component in +-``max_translation_mm`` (the seed paper's
    sampling; `geometry.random_motions`).
    """

    base: Any
    n: int
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 20.0
    seed: int = 0

    def __call__(self, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor:
        first = initial_poses(self.base, xray, detector, volume)[:1]
        if self.n <= 1:
            return first
        motions = random_motions(self.n - 1, self.max_rotation_deg, self.max_translation_mm, self.seed)
        return torch.cat([first, perturb_pose(first[0], motions, volume.center.to(torch.float64).cpu())])


def initial_poses(start, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor:
    """(K, 4, 4) float64 CPU start poses from an initialiser, or from a pose tensor (4, 4) / (K, 4, 4)."""
    if isinstance(start, torch.Tensor) or not callable(start):
        return FixedPose(start)(xray, detector, volume)
    poses = start(xray, detector, volume)
    return check_pose(poses, name=f"poses of the initialiser {type(start).__name__}").to(torch.float64).cpu()
