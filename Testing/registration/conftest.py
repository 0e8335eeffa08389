"""The registration case shared by the registration tests: the phantom seen on the demo detector."""

from __future__ import annotations

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.drr import render
from DiffRegLogic.experiments.demo import demo_detector, demo_poses
from DiffRegLogic.volume.phantoms import chest_phantom


@pytest.fixture(scope="session")
def case():
    """The phantom, the demo detector, a target pose and the X-ray (a DRR) rendered there."""
    volume = chest_phantom()
    center = volume.center.to(torch.float64)
    target, start = demo_poses(center)
    detector = demo_detector()
    xray = render(volume, detector, target)[0]
    points = evaluation.target_points(volume, 500)
    return dict(volume=volume, center=center, target=target, start=start, detector=detector, xray=xray, points=points)
