"""X-ray file formats: suffix tables, and writing detector images (DRRs) to disk (torch-free at import).

Reading lives in `DiffRegLogic.xray.readers`; this module knows which
suffixes exist and writes images: ``.npy`` (float32 as is), ``.nrrd``,
``.nii``/``.nii.gz``, ``.mha`` (float32 with the detector's pixel spacing)
and ``.png`` (an 8-bit preview).
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from ..geometry.detector import Detector

PILLOW_SUFFIXES = (".png", ".tif", ".tiff")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")
XRAY_SUFFIXES = (".npy",) + PILLOW_SUFFIXES + SITK_SUFFIXES + DICOM_SUFFIXES
"""Suffixes `read_xray` knows; a file with another suffix is tried as DICOM."""
IMAGE_SUFFIXES = (".npy", ".nrrd", ".nii", ".nii.gz", ".mha", ".png")
"""Suffixes `write_image` writes."""


def _suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix of a path, ``.nii.gz`` as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def to_uint8(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Window an image to 8 bits between two percentiles (bone bright)."""
    import numpy as np  # here, not at the top: the CLI checks suffixes (this module) before numpy is needed

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
    import numpy as np

    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
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
        from ..volume.io import _sitk

        sitk = _sitk()
        img = sitk.GetImageFromArray(array)
        if detector is not None:
            du, dv = float(detector.pixel_spacing[1]), float(detector.pixel_spacing[0])
            img.SetSpacing((du, dv) if array.ndim == 2 else (du, dv, 1.0))
        sitk.WriteImage(img, str(path))
