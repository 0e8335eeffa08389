"""The demo scenario: the built-in phantom seen by a known C-arm, a target pose and a start pose away from it.

The main job of the README's first command (``diffreg demo``) and the
default case of ``diffreg experiment``: a 200 x 200 detector of 3 mm pixels
at SDD 1020 mm, the source 600 mm from the isocentre (the phantom's centre),
a slightly oblique AP view; the start pose is the target moved by a known
rigid motion of the CT about its centre (7 deg / 14 mm).
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.carm import spherical_carm_to_pose
from ..geometry.detector import Detector
from ..geometry.motions import motion_about_center
from ..geometry.rigid import euler_to_matrix

DEMO_DETECTOR = dict(rows=200, cols=200, sdd=1020.0, pixel_spacing=(3.0, 3.0))
"""Keyword arguments of the demo's `Detector`."""
DEMO_SOURCE_TO_ISOCENTER_MM = 600.0
DEMO_TARGET_DEG = (8.0, -5.0, 0.0)
"""Spherical C-arm angles theta, phi, gamma (deg) of the target view."""
DEMO_PERTURBATION = (4.0, -3.0, 5.0, 8.0, -6.0, 10.0)
"""Rotation (deg, about x, y, z of the CT centre) and translation (mm) from the target to the start."""


def demo_detector() -> Detector:
    """The demo's detector."""
    return Detector(**DEMO_DETECTOR)


def demo_poses(center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, start) camera_from_world (4, 4) float64 of the demo, for a CT centred at ``center`` (RAS mm)."""
    center = torch.as_tensor(center, dtype=torch.float64)
    theta, phi, gamma = np.deg2rad(DEMO_TARGET_DEG)
    params = torch.tensor([theta, phi, gamma, 0.0, 0.0, 0.0], dtype=torch.float64)
    target = spherical_carm_to_pose(params, DEMO_DETECTOR["sdd"], center, radius=DEMO_SOURCE_TO_ISOCENTER_MM)
    rx, ry, rz, tx, ty, tz = DEMO_PERTURBATION
    rotation = euler_to_matrix(torch.tensor(np.deg2rad([rz, rx, ry]), dtype=torch.float64), "ZXY")
    motion = motion_about_center(rotation, torch.tensor([tx, ty, tz], dtype=torch.float64), center)
    start = target @ motion
    return target, start
