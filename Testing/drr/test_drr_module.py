"""`DRR`, the nn.Module over `render`: same numbers, same gradients, moves and converts like any module."""

from __future__ import annotations

import pytest
import torch

from DiffRegLogic import DRR, Detector, render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import clinical_to_pose
from DiffRegLogic.physics import Beam, MaterialVolume, tube_spectrum
from DiffRegLogic.volume.phantoms import chest_phantom, chest_phantom_hu


@pytest.fixture(scope="module")
def scene():
    volume = chest_phantom(shape_ijk=(32, 28, 24), spacing=(10.0, 10.0, 12.0))
    detector = Detector(24, 20, 1000.0, (12.0, 12.0))
    pose = clinical_to_pose(10.0, -5.0, 600.0, volume.center)
    return volume, detector, pose


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_forward_and_pose_gradient_equal_render(scene, renderer):
    volume, detector, pose = scene
    module = DRR(volume, detector, renderer, step_voxels=0.75)
    p1 = pose.clone().requires_grad_(True)
    p2 = pose.clone().requires_grad_(True)
    a = module(p1)
    b = render(volume, detector, p2, renderer, step_voxels=0.75)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights = torch.rand(a.shape, generator=torch.Generator().manual_seed(0))
    (g1,) = torch.autograd.grad((a * weights).sum(), p1)
    (g2,) = torch.autograd.grad((b * weights).sum(), p2)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_buffers_follow_dtype_changes_and_the_state_dict(scene):
    volume, detector, pose = scene
    module = DRR(volume, detector).double()
    assert module.volume.mu.dtype == torch.float64 and module(pose).dtype == torch.float64
    torch.testing.assert_close(module(pose), render(volume.to(dtype=torch.float64), detector, pose), rtol=0, atol=0)
    state = module.state_dict()
    assert set(state) == {"mu", "affine"}
    assert "24x20" in repr(module)


def test_a_material_volume_renders_polychromatically(scene):
    _, detector, _ = scene
    hu, affine = chest_phantom_hu(shape_ijk=(32, 28, 24), spacing=(10.0, 10.0, 12.0))
    materials = MaterialVolume.from_hu(hu, affine, Beam(tube_spectrum(80)))
    pose = clinical_to_pose(10.0, -5.0, 600.0, materials.center)
    torch.testing.assert_close(DRR(materials, detector)(pose), render(materials, detector, pose), rtol=0, atol=0)
    assert "densities" in DRR(materials, detector).state_dict()


def test_bad_arguments():
    with pytest.raises(InputError, match="Volume"):
        DRR(torch.zeros(3, 3, 3), Detector(2, 2, 100.0))
