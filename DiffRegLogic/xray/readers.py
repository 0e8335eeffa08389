"""The intra-operative X-ray: its image in the renderer's convention and, from DICOM, its C-arm geometry.

`read_xray` turns a file into an `XRay`: an (H, W) float64 image in the
**line-integral convention** of the DRR (larger = more attenuation, bone
bright), the `Detector` when the file states it, the clinical C-arm angles
for an initial pose, and a mask of collimated borders.

Formats (by suffix; a file with another suffix is tried as DICOM):

* ``.npy``: a 2D array (singleton axes are dropped).
* ``.png``, ``.tif``, ``.tiff``: 8- or 16-bit grayscale through Pillow, full
  precision kept (also 32-bit integer and float TIFF). RGB images whose three
  channels are equal are taken as grayscale (noted in ``meta``); real colour
  is refused. A multi-page TIFF is read at page ``frame``.
* ``.nrrd``, ``.nhdr``, ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``: through
  SimpleITK, 2D or 3D with a single slice along any axis; the array is
  SimpleITK's ``GetArrayFromImage`` (row 0 = detector row 0), so files written
  by `DiffRegLogic.xray.files.write_image` come back as written, and the pixel spacing
  is taken from the file (ITK stores it as (column, row)).
* DICOM (``.dcm``, ``.dicom`` or any file pydicom recognises): DX, CR, XA, RF,
  single- or multi-frame (``frame`` picks one), classic or enhanced
  (per-frame and shared functional groups are searched for every tag).

Order of operations: read (frame) -> modality LUT (DICOM) -> ``flip_rows`` /
``flip_cols`` -> collimation detection and mask -> intensity convention ->
crop. Geometry follows the pixels through every step: a flip mirrors the
principal point (cx -> W-1-cx, cy -> H-1-cy), a crop shifts it (cx - left,
cy - top) and shrinks the detector, so each kept pixel keeps its physical ray.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..limits import MAX_DETECTOR_PIXELS, PIXEL_SPACING_RANGE_MM, check_number
from .collimation import _check_margins, crop_xray, detect_collimation, flip_detector
from .dicom import _read_dicom
from .files import DICOM_SUFFIXES, PILLOW_SUFFIXES, SITK_SUFFIXES, _suffix
from .image import XRay, _check_size, _validated
from .intensity import INTENSITY_CONVENTIONS, _apply_convention

__all__ = ["read_xray", "xray_from_array"]


def read_xray(path: str | os.PathLike, *, intensity: str = "auto", frame: int = 0, flip_rows: bool = False,
              flip_cols: bool = False, crop="none") -> XRay:
    """Read an X-ray image (and, from DICOM, its C-arm geometry) for registration.

    Args:
        path: the image file (formats in the module docstring).
        intensity: what the stored values are.

            * ``"line_integral"``: already bone bright (a DRR, a -log
              processed image); kept as they are.
            * ``"intensity"``: raw detector intensity I (bone dark);
              converted to ``-log(I / I0)`` after clamping I to
              ``INTENSITY_FLOOR * max(I)``, with I0 the ``I0_PERCENTILE``
              (99.9th) percentile of the unmasked pixels, so the open field
              is about 0 and attenuation is positive.
            * ``"auto"`` (default): DICOM decides from its tags (below);
              any other format means ``"line_integral"``, because the images
              this engine writes and most preprocessed research X-rays are
              bone bright and these formats carry no tag to tell. Give
              ``"intensity"`` for a raw detector image.

            * ``"inverted"`` (log, bone dark: reflected about the open
              field) and ``"inverted_intensity"`` (raw intensity shown
              inverted, bone bright: un-inverted, then -log), see
              `DiffRegLogic.xray.intensity`.

            For DICOM the explicit names describe the values after the
            modality LUT and override every tag. ``meta["intensity_source"]``
            records who decided: ``"user"`` (an explicit name), ``"tags"``
            (DICOM intensity tags) or ``"default"`` (``"auto"`` and nothing
            told: values kept; `DiffRegLogic.xray.convention.resolve_convention`
            may then detect the convention from the image and a DRR).
        frame: frame of a multi-frame DICOM or page of a multi-page TIFF (0-based).
        flip_rows, flip_cols: mirror the image up-down / left-right, for
            files stored as a mirrored fluoroscopy display shows them.
            Applied before the crop. The detector keeps its size, sdd and
            spacing; its principal point, a location in the pixel grid,
            mirrors with the pixels (cx -> W-1-cx, cy -> H-1-cy).
        crop: ``"none"``, ``"auto"`` (the margins `detect_collimation`
            finds) or ``(top, bottom, left, right)`` pixels. The detector
            follows (see `crop_xray`). Collimated borders get ``mask = False``
            whatever ``crop`` is.

    DICOM tags (each one used is recorded in ``meta["dicom_tags"]`` with its
    number, value and where it was found):

    * Geometry: DistanceSourceToDetector (0018,1110) = sdd;
      ImagerPixelSpacing (0018,1164) (row\\col), else PixelSpacing
      (0028,0030) (``meta["pixel_spacing_source"]`` says which). With only
      PixelSpacing, its value is the detector spacing, except when
      PixelSpacingCalibrationType (0028,0A02) is GEOMETRY and
      EstimatedRadiographicMagnificationFactor (0018,1114) is present: that
      PixelSpacing was scaled to the patient plane (imager spacing / factor),
      so the detector spacing is PixelSpacing x factor. In any other case the
      factor is recorded but not applied, with a note. The principal point
      stays at the image centre: DetectorActiveOrigin (0018,7028),
      DetectorActiveDimensions (0018,7026) and the field-of-view tags place
      the active area and the field of view on the detector housing but not
      the central ray, so they are recorded only (``meta["principal_point"]``).
    * Clinical angles: PositionerPrimaryAngle (0018,1510, LAO+/RAO-),
      PositionerSecondaryAngle (0018,1511, CRA+/CAU-) and
      DistanceSourceToPatient (0018,1111) (or DistanceSourceToIsocenter
      (0018,9402) of enhanced files). Angles in a frame's functional group
      are that frame's. Top-level angles of a multi-frame file whose C-arm
      moved (non-zero PositionerPrimary/SecondaryAngleIncrement (0018,1520/1521))
      describe no single frame: ``clinical`` is then ``None`` and the reason
      is in ``meta["clinical_unavailable"]``.
    * Values: RescaleSlope/RescaleIntercept (0028,1053/1052) or a
      ModalityLUTSequence are applied first. Then, with ``intensity="auto"``:
      PixelIntensityRelationship (0028,1040) LIN = values proportional to
      beam intensity -> ``-log(I / I0)``; LOG = a log-transformed image ->
      no logarithm. PixelIntensityRelationshipSign (0028,1041) says the
      direction: +1 (lower values = less beam intensity, bone dark) or -1
      (higher values = less intensity, bone bright); when it is absent (XA,
      RF), +1, the tags' own meaning. A LOG image with sign +1 is reflected
      about its open-field level (``ref - v``, ref = the I0 percentile); a
      LIN image with sign -1 is already bone bright and kept (its offset is
      unknown, so no logarithm). Without a LIN/LOG relationship (CR, DISP,
      OTHER) the image is taken as a radiograph for presentation:
      PhotometricInterpretation (0028,0004) MONOCHROME1 (minimum shown white,
      so bone stored low) is reflected, MONOCHROME2 kept. Either way the
      result is bone bright. PixelPaddingValue (0028,0120) and rectangular or
      circular display shutters (0018,1600...) set ``mask = False`` where
      they apply.

    Raises `InputError` for a missing file, an unknown suffix that is not
    DICOM, more than one slice, colour, empty or non-finite images, bad
    arguments, and undecodable (compressed) DICOM pixel data.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"the X-ray path must be a file name (str or Path), got {type(path).__name__}")
    path = Path(path)
    if intensity not in INTENSITY_CONVENTIONS:
        raise InputError(f"unknown intensity convention {intensity!r}: use one of {', '.join(INTENSITY_CONVENTIONS)}")
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 0:
        raise InputError(f"frame must be a non-negative integer, got {frame!r}")
    if isinstance(crop, str) and crop not in ("none", "auto"):
        raise InputError(f"crop must be 'none', 'auto' or (top, bottom, left, right), got {crop!r}")
    if not path.exists():
        raise InputError(f"X-ray file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give one X-ray image file (for a DICOM series, one file of it)")

    meta: dict = {"path": str(path), "frame": int(frame), "notes": []}
    suffix = _suffix(path)
    geometry: dict = {}
    if suffix == ".npy":
        array = _read_npy(path, frame, meta)
        meta["format"] = "npy"
    elif suffix in PILLOW_SUFFIXES:
        array = _read_pillow(path, frame, meta)
    elif suffix in SITK_SUFFIXES:
        array, spacing = _read_sitk(path, frame, meta)
        geometry["pixel_spacing"] = spacing
    else:
        array, geometry = _read_dicom(path, frame, meta, force=suffix in DICOM_SUFFIXES)

    return _build_xray(_validated(array, path), meta, geometry, intensity, flip_rows, flip_cols, crop)


def xray_from_array(image, *, intensity: str = "line_integral", pixel_spacing: tuple[float, float] | None = None,
                    name: str = "the X-ray", crop="none") -> XRay:
    """An `XRay` from an image already in memory (e.g. a Slicer volume node's array).

    Args:
        image: (H, W) real numbers, row 0 = detector row 0.
        intensity: ``"line_integral"`` (bone bright, kept), ``"intensity"``
            (raw detector intensity, converted to -log(I / I0) as in
            `read_xray`), ``"inverted"`` or ``"inverted_intensity"``;
            ``"auto"`` keeps the values (no tags to tell) with
            ``meta["intensity_source"] = "default"``.
        pixel_spacing: (row mm, column mm) when known.
        name: what to call the image in error messages.
        crop: as in `read_xray`.

    The same checks (finite, not constant, not empty) and the same
    collimation mask as `read_xray`.
    """
    if intensity not in INTENSITY_CONVENTIONS:
        raise InputError(f"unknown intensity convention {intensity!r}: use one of {', '.join(INTENSITY_CONVENTIONS)}")
    if isinstance(crop, str) and crop not in ("none", "auto"):
        raise InputError(f"crop must be 'none', 'auto' or (top, bottom, left, right), got {crop!r}")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    try:
        array = np.asarray(image)
    except (TypeError, ValueError) as exc:  # ragged lists, objects
        raise InputError(f"{name}: expected one 2D image (H, W) of numbers ({exc})") from None
    if array.ndim != 2:
        raise InputError(f"{name}: expected one 2D image (H, W), got shape {array.shape}")
    meta: dict = {"path": name, "format": "array", "frame": 0, "notes": []}
    try:
        spacing = None if pixel_spacing is None else tuple(float(v) for v in pixel_spacing)
    except (TypeError, ValueError):
        spacing = ()
    if spacing is not None and len(spacing) != 2:
        raise InputError(f"pixel_spacing must be (row mm, column mm) or None, got {pixel_spacing!r}")
    geometry: dict = {} if spacing is None else {"pixel_spacing": spacing}
    return _build_xray(_validated(array, name), meta, geometry, intensity, False, False, crop)


def _build_xray(array: np.ndarray, meta: dict, geometry: dict, intensity: str, flip_rows: bool, flip_cols: bool,
                crop) -> XRay:
    """Flip, mask, convert and crop a validated (H, W) array into an `XRay`."""
    masks = geometry.pop("masks", [])
    h, w = array.shape
    meta["shape_read"] = (h, w)
    meta["flip_rows"], meta["flip_cols"] = bool(flip_rows), bool(flip_cols)
    meta["crop"] = (0, 0, 0, 0)
    if flip_rows or flip_cols:
        axes = tuple(a for a, f in ((0, flip_rows), (1, flip_cols)) if f)
        array = np.flip(array, axes).copy()
        masks = [np.flip(m, axes).copy() for m in masks]

    # collimation and mask, on the values as stored (any monotone conversion keeps constant borders constant)
    margins = detect_collimation(array)
    meta["collimation"] = margins
    mask = np.ones((h, w), dtype=bool)
    if any(margins):
        top, bottom, left, right = margins
        mask[:top] = False
        mask[h - bottom:] = False
        mask[:, :left] = False
        mask[:, w - right:] = False
        meta.setdefault("mask_sources", []).append("constant borders")
    for m in masks:
        mask &= m
    has_mask = not mask.all()

    image = _apply_convention(array, intensity, geometry.pop("auto_convention", None), mask, meta)

    detector = geometry.get("detector")
    if detector is not None:
        detector = flip_detector(detector, rows=flip_rows, cols=flip_cols)
    spacing = geometry.get("pixel_spacing")
    xray = XRay(
        image=torch.from_numpy(image),
        detector=detector,
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        clinical=geometry.get("clinical"),
        mask=torch.from_numpy(mask) if has_mask else None,
        meta=meta,
    )
    if isinstance(crop, str):
        margins = margins if crop == "auto" else (0, 0, 0, 0)
    else:
        margins = crop
    margins = _check_margins(margins, h, w)
    if any(margins):
        xray = crop_xray(xray, *margins)
    return xray


def _squeeze_to_2d(array: np.ndarray, path: Path, what: str = "array") -> tuple[np.ndarray, tuple[int, ...]]:
    """Drop singleton axes of a >2D array; return it and the kept axes' original indices."""
    kept = list(range(array.ndim))
    while len(kept) > 2 and any(array.shape[a] == 1 for a in kept):
        kept.remove(next(a for a in kept if array.shape[a] == 1))
    if len(kept) != 2:
        raise InputError(
            f"{path} holds a {array.ndim}D {what} of shape {array.shape}, i.e. more than one slice; an X-ray "
            "is one 2D image: save the one slice you want (a multi-frame DICOM can be read with frame=)"
        )
    return array.reshape([array.shape[a] for a in kept]), tuple(kept)


def _single_frame(frame: int, path: Path, kind: str) -> None:
    if frame != 0:
        raise InputError(f"frame={frame} asked for, but {path} is a single {kind} image; use frame=0")


def _read_npy(path: Path, frame: int, meta: dict) -> np.ndarray:
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:  # the header first: the size it announces is checked before anything is allocated
            version = fmt.read_magic(f)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            held = os.fstat(f.fileno()).st_size - f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"could not read {path} as a numpy array: {exc}; give a .npy file saved by numpy.save") from exc
    _check_size(shape, path)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if not dtype.hasobject and held < need:
        raise InputError(f"{path} is truncated: its header announces a {dtype} array of shape {shape} ({need} bytes) "
                         f"but the file holds {held} bytes; copy or save the file again")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"could not read {path} as a numpy array: {exc}") from exc
    meta["source_dtype"] = str(array.dtype)
    if array.ndim > 2:
        array, _ = _squeeze_to_2d(array, path)
    elif array.ndim < 2:
        raise InputError(f"{path} holds a {array.ndim}D array of shape {array.shape}; an X-ray is a 2D array (H, W)")
    _single_frame(frame, path, ".npy")
    return array


def _read_pillow(path: Path, frame: int, meta: dict) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():  # Pillow warns of large images and odd chunks; the limits below decide
        warnings.simplefilter("ignore")
        try:
            img = Image.open(path)
            with img:
                _check_size(img.size[::-1], path)
                return _pillow_pixels(img, path, frame, meta)
        except InputError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, EOFError, SyntaxError) \
                as exc:
            truncated = "truncated" in str(exc) or isinstance(exc, EOFError)
            raise InputError(
                f"could not read {path} as an image: {exc}"
                + ("; the file was cut short (an interrupted copy or download?): copy or export it again"
                   if truncated else "")
            ) from exc


def _pillow_pixels(img, path: Path, frame: int, meta: dict) -> np.ndarray:
    """The pixels of an open Pillow image (page ``frame``) as a grayscale array."""
    pages = int(getattr(img, "n_frames", 1))
    if frame >= pages:
        raise InputError(f"frame={frame} asked for, but {path} has {pages} page(s); use 0..{pages - 1}")
    img.seek(frame)
    meta["format"] = (img.format or path.suffix.lstrip(".")).lower()
    meta["source_mode"] = img.mode
    meta["pages"] = pages
    if img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16"):
        array = np.asarray(img)
    elif img.mode in ("LA", "La"):
        array = np.asarray(img.getchannel(0))
        meta["notes"].append(f"{img.mode} image: the alpha channel is ignored")
    else:
        try:
            rgb = np.asarray(img.convert("RGB")).astype(np.int64)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: image mode {img.mode} cannot be read as grayscale ({exc})") from exc
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise InputError(
                f"{path} is a colour ({img.mode}) image; an X-ray is grayscale: export it as a "
                "grayscale (8- or 16-bit) PNG/TIFF, or DICOM"
            )
        array = rgb[..., 0]
        meta["notes"].append(
            f"{img.mode} image with three equal channels taken as 8-bit grayscale (one channel)"
        )
    meta["source_dtype"] = str(array.dtype)
    return array


def _read_sitk(path: Path, frame: int, meta: dict) -> tuple[np.ndarray, tuple[float, float]]:
    from ..volume.io import _sitk, read_image_file

    sitk = _sitk()
    img = read_image_file(path, "X-ray", MAX_DETECTOR_PIXELS)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {img.GetNumberOfComponentsPerPixel()} components per pixel (colour/vector); "
            "an X-ray is one grayscale value per pixel"
        )
    _single_frame(frame, path, "SimpleITK")
    array = sitk.GetArrayFromImage(img)  # axes reversed: (..., row, col) = (..., j, i)
    spacing_ijk = img.GetSpacing()
    meta["format"] = "simpleitk"
    meta["source_dtype"] = str(array.dtype)
    meta["itk_spacing"] = tuple(float(s) for s in spacing_ijk)
    meta["itk_direction"] = tuple(float(d) for d in img.GetDirection())
    if array.ndim > 2:
        array, kept = _squeeze_to_2d(array, path, "image")
    else:
        kept = (0, 1)
    n = len(spacing_ijk)
    spacing = (float(spacing_ijk[n - 1 - kept[0]]), float(spacing_ijk[n - 1 - kept[1]]))
    for name, value in zip(("row", "column"), spacing):
        try:
            check_number(f"{path}: pixel spacing of the {name}s", value, *PIXEL_SPACING_RANGE_MM, unit="mm")
        except InputError as exc:
            raise InputError(f"{exc}; fix the spacing in the file's header") from None
    meta["pixel_spacing_source"] = "file spacing (ITK column, row order)"
    return array, spacing
