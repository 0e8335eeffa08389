"""Poses of the training DRRs: a reference view and rigid motions of the CT about its centre sampled around it.

The learning convention (shared by the data, the network's targets and the
initialiser): a *motion* is a (n, 6) float64 tensor
``[rotation vector (rad, 3), translation (mm, 3)]`` of the CT about its
centre ``c`` (RAS mm); its pose is

    camera_from_world = reference_pose @ T(c) [R(rotvec) | t] T(-c)

(`DiffRegLogic.geometry.motions.perturb_pose`), so the zero motion is the
reference view and the network predicts (R, t) of the motion.

`PoseRange` holds the per-axis half-widths of the sampling box (the seed
paper's +-45 deg / +-60 mm by default); `sample_motions` draws each component
uniformly in that box from a caller's `torch.Generator`; `reference_view` is
the AP view of the CT centre.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import InputError
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector
from ..geometry.motions import motion_about_center_params, perturb_pose
from ..geometry.rigid import check_pose, invert_rigid, so3_log
from ..limits import MAX_TRANSLATION_MM, check_number
from .configs import known_fields

MAX_ROTATION_DEG = 180.0
"""Largest half-width of a rotation-vector component (deg)."""

VIEWS = ("AP", "PA")
"""Reference views: AP (source anterior of the patient, beam towards posterior) or PA (DICOM's 0/0)."""


def _triple(name: str, value, high: float, unit: str) -> tuple[float, float, float]:
    """``value`` (one number or three) as three finite floats in [0, high]."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * 3
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        raise InputError(f"{name} must be three numbers of {unit} (x, y, z half-widths) or one for all, got "
                         f"{value!r:.80}")
    out = []
    for v in value:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        try:
            out.append(check_number(name, v, 0.0, high, unit=unit))
        except InputError as exc:
            raise InputError(f"{exc}; each is the half-width of the uniform sampling range (0 fixes that axis)") \
                from None
    return tuple(out)


@dataclass(frozen=True)
class PoseRange:
    """Half-widths of the box the training motions are drawn from, per axis of the CT (x, y, z).

    Args:
        rotation_deg: rotation-vector component half-widths (deg), each in [0, `MAX_ROTATION_DEG`].
        translation_mm: translation half-widths (mm), each in [0, `MAX_TRANSLATION_MM`].

    One number stands for all three axes. Checked on construction (`InputError`).
    """

    rotation_deg: tuple[float, float, float] = (45.0, 45.0, 45.0)
    translation_mm: tuple[float, float, float] = (60.0, 60.0, 60.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation_deg", _triple("rotation_deg", self.rotation_deg, MAX_ROTATION_DEG, "deg"))
        object.__setattr__(self, "translation_mm", _triple("translation_mm", self.translation_mm,
                                                           MAX_TRANSLATION_MM, "mm"))

    def scaled(self, fraction: float) -> "PoseRange":
        """The range with every half-width times ``fraction`` (a finite number >= 0; rotations capped at 180 deg)."""
        fraction = check_number("range fraction", fraction, 0.0, None)
        return PoseRange(tuple(min(r * fraction, MAX_ROTATION_DEG) for r in self.rotation_deg),
                         tuple(t * fraction for t in self.translation_mm))

    def half_widths(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(6,) half-widths in motion units: rotation (rad, 3), translation (mm, 3)."""
        return torch.tensor([math.radians(r) for r in self.rotation_deg] + list(self.translation_mm), dtype=dtype)

    def to_dict(self) -> dict:
        """JSON-ready ``{"rotation_deg": [3], "translation_mm": [3]}``."""
        return {"rotation_deg": list(self.rotation_deg), "translation_mm": list(self.translation_mm)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PoseRange":
        """Inverse of `to_dict`; missing keys take the defaults, unknown keys raise InputError."""
        data = known_fields(cls, data, "pose range")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def sample_motions(n: int, pose_range: PoseRange, generator: torch.Generator) -> torch.Tensor:
    """n motions (n, 6) float64 [rotation vector (rad, 3), translation (mm, 3)], each component uniform in +-range.

    Draws ``torch.rand(n, 6)`` from ``generator`` only (the global RNG is not
    touched), so the same generator state gives the same motions; with equal
    half-widths on every axis the numbers equal
    `DiffRegLogic.geometry.motions.random_motions` seeded alike. The tensor
    lies on the generator's device.
    """
    n = check_number("number of motions", n, 0, None, integer=True)
    if not isinstance(pose_range, PoseRange):
        raise InputError(f"pose_range must be a PoseRange, got {type(pose_range).__name__}")
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator (seed it: torch.Generator().manual_seed(seed)), got "
                         f"{type(generator).__name__}")
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64, device=generator.device) * 2 - 1
    return u * pose_range.half_widths().to(u.device)


def reference_view(volume, detector: Detector, source_to_isocenter_mm: float | None = None, *,
                   view: str = "AP") -> torch.Tensor:
    """camera_from_world (4, 4) float64 of a reference view whose principal ray passes through the CT centre.

    ``view="AP"`` (default): the source anterior of the patient, the beam
    towards posterior, rows towards the feet (clinical angles primary 180,
    secondary 0 of `geometry.carm.clinical_to_pose`, the same pose as the
    spherical C-arm model at zero angles). ``view="PA"``: DICOM's 0/0 position
    (clinical 0, 0: the detector anterior). The source lies
    ``source_to_isocenter_mm`` (default ``detector.sdd / 2``, a finite number
    in (0, sdd)) from the CT centre, which therefore projects to the
    principal point.
    """
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    center = getattr(volume, "center", None)
    if not isinstance(center, torch.Tensor):
        raise InputError(f"volume must be a DiffRegLogic Volume (with a centre), got {type(volume).__name__}")
    if view not in VIEWS:
        raise InputError(f"unknown reference view {view!r}; choose one of {', '.join(VIEWS)}")
    sdd = float(detector.sdd)
    if source_to_isocenter_mm is None:
        distance = sdd / 2
    else:
        distance = check_number("source_to_isocenter_mm", source_to_isocenter_mm, 0.0, sdd, low_open=True, unit="mm")
        if distance >= sdd:
            raise InputError(f"source_to_isocenter_mm must be below the source-to-detector distance ({sdd:g} mm), "
                             f"got {distance:g} mm; the CT centre lies between the source and the detector")
    primary = 180.0 if view == "AP" else 0.0
    return clinical_to_pose(primary, 0.0, distance, center.detach().to("cpu", torch.float64), dtype=torch.float64)


def _pose_and_center(reference_pose, center) -> tuple[torch.Tensor, torch.Tensor]:
    reference_pose = check_pose(reference_pose, name="reference_pose").to(torch.float64)
    if reference_pose.shape[0] != 1:
        raise InputError(f"reference_pose must be one (4, 4) camera_from_world, got {tuple(reference_pose.shape)}")
    reference_pose = reference_pose[0]
    center = torch.as_tensor(center, dtype=torch.float64, device=reference_pose.device)
    if center.shape != (3,) or not torch.isfinite(center).all():
        raise InputError(f"center must be three finite numbers (RAS mm), got {center.tolist()}")
    return reference_pose, center


def poses_from_motions(reference_pose, motions: torch.Tensor, center) -> torch.Tensor:
    """camera_from_world (n, 4, 4) float64 of motions (n, 6) of the CT about ``center`` (mm) from ``reference_pose``."""
    reference_pose, center = _pose_and_center(reference_pose, center)
    motions = torch.as_tensor(motions)
    if motions.ndim != 2 or motions.shape[1] != 6 or not motions.is_floating_point():
        raise InputError(f"motions must be a float tensor (n, 6) [rotation vector rad, translation mm], got "
                         f"{tuple(motions.shape)}")
    if not torch.isfinite(motions).all():
        raise InputError("motions contain NaN or infinite values")
    motions = motions.to(device=reference_pose.device, dtype=torch.float64)
    return perturb_pose(reference_pose, motions, center)


def motions_from_poses(reference_pose, poses: torch.Tensor, center) -> torch.Tensor:
    """Inverse of `poses_from_motions`: poses (n, 4, 4) -> motions (n, 6) float64 (rotation vectors of angle <= pi)."""
    reference_pose, center = _pose_and_center(reference_pose, center)
    poses = check_pose(poses, name="poses").to(device=reference_pose.device, dtype=torch.float64)
    if poses.ndim == 2:
        poses = poses[None]
    rotation, translation = motion_about_center_params(invert_rigid(reference_pose) @ poses, center)
    return torch.cat([so3_log(rotation), translation], -1)
