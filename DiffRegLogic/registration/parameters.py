"""The six numbers the optimisers move: SE(3) coordinates about the CT centre, or the spherical C-arm model.

* ``"se3"`` (default): ``pose = reference @ T(c) exp(xi) T(-c)`` with
  ``xi = (omega [rad], v [mm])``, a motion of the CT about its centre c;
* ``"spherical"``: the seed paper's C-arm model ``(theta, phi, gamma [rad],
  bx, by, bz [mm])`` with the source on a sphere about the isocentre.
"""

from __future__ import annotations

import torch

from ..geometry.carm import pose_to_spherical_carm, spherical_carm_to_pose
from ..geometry.motions import pose_from_se3_about, se3_about_from_pose


class PoseParameters:
    """Maps parameters (B, 6) to camera_from_world (B, 4, 4) and back."""

    def __init__(self, kind: str, reference: torch.Tensor, center: torch.Tensor, sdd: float) -> None:
        self.kind, self.reference, self.center, self.sdd = kind, reference, center, float(sdd)
        source = -(reference[:3, :3].T @ reference[:3, 3])
        self.radius = float((source - center).norm())

    def pose(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "se3":
            return pose_from_se3_about(self.reference.to(x.dtype), x, self.center.to(x.dtype))
        return spherical_carm_to_pose(x, self.sdd, self.center.to(x.dtype), radius=self.radius)

    def params(self, pose: torch.Tensor) -> torch.Tensor:
        if self.kind == "se3":
            return se3_about_from_pose(self.reference, pose, self.center)
        return pose_to_spherical_carm(pose, self.sdd, self.center, radius=self.radius)

    def source_to_center(self) -> float:
        """Distance (mm) from the X-ray source of the reference pose to the centre: sizes the CT pyramid."""
        return source_to_center(self.reference, self.center)


def source_to_center(pose: torch.Tensor, center: torch.Tensor) -> float:
    """Distance (mm) from the X-ray source of camera_from_world ``pose`` (4, 4) to the world point ``center`` (3,)."""
    return float((pose[:3, :3] @ center + pose[:3, 3]).norm())
