"""Shared fixtures of the engine tests; reference computations live in references.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smooth_phantom():
    """A small smooth version of the chest phantom (float64, 24 x 22 x 20 voxels of 14 mm)."""
    from DiffRegLogic.volume.phantoms import chest_phantom

    return chest_phantom(shape_ijk=(24, 22, 20), spacing=(14.0, 13.5, 14.5), smooth_sigma_voxels=1.0,
                         dtype=torch.float64)
