"""Files in and out: CT volumes, DRR images, geometry and pose JSON.

CT volumes are read with SimpleITK (NIfTI, NRRD, MHA/MHD, a DICOM series
folder) and always land in RAS world coordinates: ITK reports geometry in
LPS, so ``ijk -> RAS = diag(-1, -1, 1) @ [direction * spacing | origin]``,
whatever the file's direction matrix (oblique included). Input files are only
ever read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .geometry import Detector, check_pose
from .volume import HUToMu, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = (".npy", ".nrrd", ".nii", ".nii.gz", ".mha", ".png")


def _suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in (".nii.gz",):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


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


# --------------------------------------------------------------------------
# DRR images
# --------------------------------------------------------------------------


def to_uint8(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Window an image to 8 bits between two percentiles (bone bright)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def check_image_suffix(path: str | os.PathLike) -> None:
    """Raise InputError unless ``path`` has an image extension `write_image` knows."""
    if _suffix(path) not in IMAGE_SUFFIXES:
        raise InputError(f"unknown output type {path}: use one of {', '.join(IMAGE_SUFFIXES)}")


def write_image(path: str | os.PathLike, image, detector: Detector | None = None) -> None:
    """Write a DRR (H, W) or a batch (B, H, W) by the file's extension.

    ``.npy``: float32 array as is. ``.nrrd``, ``.nii``/``.nii.gz``, ``.mha``:
    float32 image with the detector's pixel spacing (column, row). ``.png``:
    an 8-bit preview windowed between the 0.5 and 99.5 percentiles (a batch
    is tiled side by side).
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise InputError(f"a DRR must be (H, W) or (B, H, W), got shape {array.shape}")
    check_image_suffix(path)
    suffix = _suffix(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".png":
        from PIL import Image

        tiled = np.concatenate(list(array), axis=1) if array.ndim == 3 else array
        Image.fromarray(to_uint8(tiled)).save(path)
    else:  # .nrrd, .nii, .nii.gz, .mha
        sitk = _sitk()
        img = sitk.GetImageFromArray(array)
        if detector is not None:
            du, dv = float(detector.pixel_spacing[1]), float(detector.pixel_spacing[0])
            img.SetSpacing((du, dv) if array.ndim == 2 else (du, dv, 1.0))
        sitk.WriteImage(img, str(path))


# --------------------------------------------------------------------------
# Geometry and pose JSON
# --------------------------------------------------------------------------

GEOMETRY_KEYS = ("source_to_detector_mm", "rows", "cols", "pixel_spacing_mm")


def _load_json(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} file {path} must hold a JSON object, got {type(data).__name__}")
    return data


def detector_from_dict(data: dict, source: str = "geometry") -> Detector:
    """Detector from ``{"source_to_detector_mm", "rows", "cols", "pixel_spacing_mm": [row, col],
    "principal_point_px": [col, row] (optional)}``."""
    missing = [k for k in GEOMETRY_KEYS if k not in data]
    if missing:
        raise InputError(
            f"{source} is missing {', '.join(repr(k) for k in missing)}; it needs "
            f"{', '.join(GEOMETRY_KEYS)} and optionally principal_point_px"
        )
    def number(key, value, positive=True) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value) or (positive and value <= 0):
            raise InputError(f"{source}: {key} must be a finite {'positive ' if positive else ''}number, got {value!r}")
        return float(value)

    def pair(key, value, positive, meaning) -> tuple[float, float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "pixel_spacing_mm":
            value = [value, value]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise InputError(f"{source}: {key} must be {meaning}, got {value!r}")
        return number(f"{key}[0]", value[0], positive), number(f"{key}[1]", value[1], positive)

    for key in ("rows", "cols"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{source}: {key} must be a positive integer number of pixels, got {value!r}")
    sdd = number("source_to_detector_mm", data["source_to_detector_mm"])
    spacing = pair("pixel_spacing_mm", data["pixel_spacing_mm"], True, "[row_mm, col_mm]")
    pp = data.get("principal_point_px")
    if pp is not None:
        pp = pair("principal_point_px", pp, False, "[col_px, row_px]")
    return Detector(rows=data["rows"], cols=data["cols"], sdd=sdd, pixel_spacing=spacing, principal_point=pp)


def detector_to_dict(detector: Detector) -> dict:
    out = {
        "source_to_detector_mm": float(detector.sdd),
        "rows": detector.rows,
        "cols": detector.cols,
        "pixel_spacing_mm": [float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])],
    }
    if detector.principal_point is not None:
        out["principal_point_px"] = [float(detector.principal_point[0]), float(detector.principal_point[1])]
    return out


def read_geometry(path: str | os.PathLike) -> Detector:
    """Detector from a geometry JSON file (see `detector_from_dict`)."""
    return detector_from_dict(_load_json(path, "geometry"), f"geometry file {path}")


def write_json(path: str | os.PathLike, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def pose_from_dict(data: dict, source: str = "pose") -> torch.Tensor:
    """(4, 4) float64 camera_from_world from ``{"camera_from_world": [[...], ...]}`` (mm, RAS world)."""
    if "camera_from_world" not in data:
        raise InputError(f"{source} is missing 'camera_from_world' (a 4x4 matrix, mm, RAS world)")
    try:
        matrix = torch.tensor(data["camera_from_world"], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{source}: camera_from_world must be a 4x4 array of numbers ({exc})") from exc
    return check_pose(matrix, name=f"{source} camera_from_world")[0]


def read_pose(path: str | os.PathLike) -> torch.Tensor:
    return pose_from_dict(_load_json(path, "pose"), f"pose file {path}")


def pose_to_dict(pose: torch.Tensor) -> dict:
    return {"camera_from_world": pose.detach().cpu().double().reshape(4, 4).tolist()}
