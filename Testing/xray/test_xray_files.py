"""Tests of DiffRegLogic.xray.files: writing detector images, read back with numpy, Pillow and SimpleITK.
"""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.xray.files import write_image

# --------------------------------------------------------------------------
from file_references import DT
# io: DRR images
# --------------------------------------------------------------------------


def test_write_image_npy(tmp_path):
    rng = np.random.default_rng(9)
    img = rng.uniform(0, 5, size=(6, 9))
    write_image(tmp_path / "drr.npy", torch.as_tensor(img, dtype=DT))
    back = np.load(tmp_path / "drr.npy")
    assert back.dtype == np.float32 and back.shape == (6, 9)
    np.testing.assert_array_equal(back, img.astype(np.float32))
    # a batch of one is stored as (H, W)
    write_image(tmp_path / "one.npy", img[None])
    assert np.load(tmp_path / "one.npy").shape == (6, 9)
    # a batch stays (B, H, W)
    write_image(tmp_path / "batch.npy", np.stack([img, 2 * img]))
    np.testing.assert_array_equal(np.load(tmp_path / "batch.npy")[1], (2 * img).astype(np.float32))


def test_write_image_png(tmp_path):
    from PIL import Image

    img = np.zeros((10, 12))
    img[:, 6:] = 3.0  # two levels: the window maps them to 0 and 255
    write_image(tmp_path / "sub" / "drr.png", img)
    back = np.asarray(Image.open(tmp_path / "sub" / "drr.png"))
    assert back.dtype == np.uint8 and back.shape == (10, 12)
    np.testing.assert_array_equal(back, np.where(img > 0, 255, 0))
    # ramp: monotone, full range
    ramp = np.tile(np.linspace(0, 1, 201), (3, 1))
    write_image(tmp_path / "ramp.png", ramp)
    back = np.asarray(Image.open(tmp_path / "ramp.png")).astype(int)
    assert back.min() == 0 and back.max() == 255 and (np.diff(back, axis=1) >= 0).all()
    # a batch is tiled side by side
    write_image(tmp_path / "batch.png", np.stack([img, img]))
    assert np.asarray(Image.open(tmp_path / "batch.png")).shape == (10, 24)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_write_image_stores_pixel_spacing(tmp_path, suffix):
    rng = np.random.default_rng(10)
    img = rng.uniform(0, 5, size=(7, 11))
    det = Detector(rows=7, cols=11, sdd=1000.0, pixel_spacing=(0.4, 0.25))  # (row, column)
    path = tmp_path / f"drr{suffix}"
    write_image(path, torch.as_tensor(img), det)
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == (11, 7)  # ITK (x = column, y = row)
    np.testing.assert_allclose(back.GetSpacing(), (0.25, 0.4), rtol=1e-6)  # (column, row)
    arr = sitk.GetArrayFromImage(back)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, img.astype(np.float32))


def test_write_image_batch_spacing(tmp_path):
    det = Detector(rows=4, cols=5, sdd=1000.0, pixel_spacing=(0.3, 0.7))
    write_image(tmp_path / "batch.mha", np.zeros((3, 4, 5)), det)
    back = sitk.ReadImage(str(tmp_path / "batch.mha"))
    assert back.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(back.GetSpacing(), (0.7, 0.3, 1.0), rtol=1e-12)


def test_write_image_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown output type"):
        write_image(tmp_path / "drr.jpg", np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\)"):
        write_image(tmp_path / "drr.npy", np.zeros(5))
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\)"):
        write_image(tmp_path / "drr.npy", np.zeros((2, 2, 3, 3)))
