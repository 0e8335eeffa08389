"""CT files in and out, always in RAS world coordinates.

CT volumes are read with SimpleITK (NIfTI, NRRD, MHA/MHD, a DICOM series
folder) and always land in RAS world coordinates: ITK reports geometry in
LPS, so ``ijk -> RAS = diag(-1, -1, 1) @ [direction * spacing | origin]``,
whatever the file's direction matrix (oblique included). Input files are only
ever read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .ct import Volume
from .hu import HUToMu

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("reading medical image files needs SimpleITK: pip install SimpleITK") from exc
    return sitk


def sitk_affine_ras(image) -> np.ndarray:
    """ijk -> RAS 4x4 matrix of a SimpleITK image (3D)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def read_ct_array(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CT file or DICOM series folder -> (values (K, J, I) float32, ijk->RAS affine (4, 4))."""
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise InputError(f"CT file or folder not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"no DICOM series found in folder {path}")
            if len(series) > 1:
                raise InputError(
                    f"folder {path} holds {len(series)} DICOM series ({', '.join(series)}); "
                    "point --ct at a folder with one series"
                )
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"could not read CT {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3:
        raise InputError(
            f"{path} is a {image.GetDimension()}D image; a CT must be a 3D volume "
            "(a 2D image is an X-ray, not a CT)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    return values, sitk_affine_ras(image)


def read_volume(path: str | os.PathLike, hu_to_mu: HUToMu | None = None, labels: str | os.PathLike | None = None,
                dtype: torch.dtype = torch.float32) -> Volume:
    """Read a CT in HU into a `Volume` (mu in 1/mm, RAS), with an optional label map on the same grid."""
    hu, affine = read_ct_array(path)
    label_array = None
    if labels is not None:
        label_array, label_affine = read_ct_array(labels)
        if label_array.shape != hu.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise InputError(
                f"label volume {labels} is not on the CT's voxel grid (shape {label_array.shape} vs {hu.shape}); "
                "resample it onto the CT first"
            )
        label_array = torch.from_numpy(np.rint(label_array).astype(np.int64))
    return Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine), hu_to_mu, label_array, dtype)


def write_volume(path: str | os.PathLike, values: np.ndarray, affine_ras: np.ndarray) -> None:
    """Write a (K, J, I) array with an ijk->RAS affine to NIfTI/NRRD/MHA (axis-aligned or oblique)."""
    sitk = _sitk()
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.asarray(values))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing[None, :]).reshape(-1).tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
