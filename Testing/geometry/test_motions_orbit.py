"""`orbit_pose`: the C-arm turned about the axis through a centre along the camera's y, against closed forms."""

from __future__ import annotations

import math

import torch

from DiffRegLogic.geometry import clinical_to_pose
from DiffRegLogic.geometry.motions import orbit_pose


def _rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_orbit_turns_the_camera_about_its_row_axis_through_the_centre():
    center = torch.tensor([10.0, -20.0, 5.0], dtype=torch.float64)
    pose = clinical_to_pose(20.0, -10.0, 600.0, center)
    for degrees in (90.0, 40.0, -33.0):
        turned = orbit_pose(pose, center, degrees)
        cam0, cam = pose[:3, :3] @ center + pose[:3, 3], turned[:3, :3] @ center + turned[:3, 3]
        torch.testing.assert_close(cam, cam0, atol=1e-9, rtol=0)  # the centre stays where the camera sees it
        # the camera's own rotation: about its y axis by the angle (Rodrigues in camera coordinates)
        relative = turned[:3, :3] @ pose[:3, :3].T
        torch.testing.assert_close(relative, _rodrigues(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                                                        math.radians(degrees)), atol=1e-12, rtol=0)
    torch.testing.assert_close(orbit_pose(pose, center, 0.0), pose.to(torch.float64))
