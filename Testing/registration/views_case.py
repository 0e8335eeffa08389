"""The biplane case shared by the multi-view tests: the phantom seen from the demo target and from 90 deg about it."""

from __future__ import annotations


import pytest
import torch

from DiffRegLogic.drr import render
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.motions import orbit_pose
from DiffRegLogic.volume.phantoms import chest_phantom

PX = 40
DETECTOR = Detector(rows=PX, cols=PX, sdd=1020.0, pixel_spacing=(600.0 / PX, 600.0 / PX))
FAST = dict(levels=(2.0, 1.0))


def make_biplane():
    """The phantom seen from the demo target and from 90 deg about it, each X-ray with seeded noise."""
    volume = chest_phantom()
    center = volume.center.to(torch.float64)
    target, _ = demo_poses(center)
    second = orbit_pose(target, center, 90.0)
    relation = second @ torch.linalg.inv(target)
    g = torch.Generator().manual_seed(3)
    xrays = []
    for pose in (target, second):
        clean = render(volume, DETECTOR, pose)[0]
        xrays.append(clean + clean.std() * torch.randn(clean.shape, generator=g, dtype=clean.dtype))
    return dict(volume=volume, center=center, target=target, second=second, relation=relation, xrays=xrays)


biplane = pytest.fixture(scope="module")(make_biplane)
