"""Bad input to the renderer gets a clear InputError (or MemoryError) that says what to do."""

from __future__ import annotations

import pytest
import torch

import DiffRegLogic.drr as drr_module
from DiffRegLogic import Detector, InputError, Volume, render
from DiffRegLogic.devices import resolve_device
from DiffRegLogic.volume.phantoms import grid_affine


@pytest.fixture()
def tiny():
    volume = Volume(torch.full((6, 7, 8), 0.02), grid_affine((8, 7, 6), (1.0, 1.0, 1.0)))
    pose = torch.eye(4, dtype=torch.float64)
    pose[2, 3] = 50.0  # volume 50 mm in front of the source
    return volume, Detector(4, 5, 100.0, (1.0, 1.0)), pose


def test_2d_array_as_ct_is_rejected():
    with pytest.raises(InputError, match="3D"):
        Volume.from_hu(torch.zeros(64, 64), torch.eye(4))
    with pytest.raises(InputError, match="3D"):
        Volume(torch.zeros(64, 64), torch.eye(4))


def test_nan_in_ct_is_rejected():
    hu = torch.zeros(4, 5, 6)
    hu[1, 2, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        Volume.from_hu(hu, torch.eye(4))


def test_empty_volume_is_rejected():
    with pytest.raises(InputError):
        Volume(torch.zeros(0, 5, 6), torch.eye(4))


@pytest.mark.parametrize("rows, cols", [(0, 10), (10, 0), (-3, 4)])
def test_zero_size_detector_is_rejected(rows, cols):
    with pytest.raises(InputError, match="at least one pixel"):
        Detector(rows, cols, 1000.0, (1.0, 1.0))


@pytest.mark.parametrize("bad", ["scaled", "sheared", "bottom_row", "nan", "shape"])
def test_non_rigid_pose_is_rejected(tiny, bad):
    volume, detector, pose = tiny
    pose = pose.clone()
    if bad == "scaled":
        pose[:3, :3] *= 1.1
    elif bad == "sheared":
        pose[0, 1] = 0.2
    elif bad == "bottom_row":
        pose[3, 0] = 0.5
    elif bad == "nan":
        pose[1, 3] = float("nan")
    else:
        pose = pose[:3]
    with pytest.raises(InputError, match="pose"):
        render(volume, detector, pose)


def test_reflection_is_not_a_pose(tiny):
    volume, detector, pose = tiny
    pose = pose.clone()
    pose[0, 0] = -1.0  # det -1: a mirror image, not a rigid motion
    with pytest.raises(InputError, match="pose"):
        render(volume, detector, pose)


def test_unknown_renderer_and_bad_step(tiny):
    volume, detector, pose = tiny
    with pytest.raises(InputError, match="unknown renderer 'raycast'.*siddon.*trilinear"):
        render(volume, detector, pose, "raycast")
    with pytest.raises(InputError, match="step_voxels"):
        render(volume, detector, pose, "trilinear", step_voxels=0.0)
    with pytest.raises(InputError, match="tile_rays"):
        render(volume, detector, pose, tile_rays=0)
    with pytest.raises(InputError, match="max_memory_mb"):
        render(volume, detector, pose, max_memory_mb=0)


def test_wrong_argument_types(tiny):
    volume, detector, pose = tiny
    with pytest.raises(InputError, match="Volume"):
        render(torch.zeros(6, 7, 8), detector, pose)
    with pytest.raises(InputError, match="Detector"):
        render(volume, {"rows": 4}, pose)


def test_cuda_absent_gives_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("gpu0")


def test_gpu_out_of_memory_becomes_memory_error_with_advice(tiny, monkeypatch):
    volume, detector, pose = tiny

    def out_of_memory(mu, rays):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(drr_module.siddon, "integrate", out_of_memory)
    with pytest.raises(MemoryError, match="lower max_memory_mb"):
        render(volume, detector, pose, backend="reference")  # the CUDA path


def test_inputs_are_not_modified(tiny):
    volume, detector, pose = tiny
    mu_before, affine_before, pose_before = volume.mu.clone(), volume.affine.clone(), pose.clone()
    for renderer in ("siddon", "trilinear"):
        out = render(volume, detector, pose, renderer)
        assert out.abs().sum() > 0
    assert torch.equal(volume.mu, mu_before) and torch.equal(volume.affine, affine_before)
    assert torch.equal(pose, pose_before)
