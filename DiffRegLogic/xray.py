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
  by `DiffRegLogic.io.write_image` come back as written, and the pixel spacing
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

import copy
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .geometry import Detector, clinical_to_pose

INTENSITY_CONVENTIONS = ("auto", "line_integral", "intensity")
I0_PERCENTILE = 99.9
"""Percentile of the (unmasked) image taken as the unattenuated intensity I0 in -log(I / I0),
and as the open-field level that inverted images are reflected about."""
INTENSITY_FLOOR = 1e-6
"""Raw intensities are clamped to ``INTENSITY_FLOOR * max(I)`` before the logarithm."""
COLLIMATION_TOL = 1e-6
"""A border row/column is collimated when its std and its offset from the border value are at most
``COLLIMATION_TOL * (max - min)`` of the image."""

PILLOW_SUFFIXES = (".png", ".tif", ".tiff")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")
XRAY_SUFFIXES = (".npy",) + PILLOW_SUFFIXES + SITK_SUFFIXES + DICOM_SUFFIXES

_CLINICAL_TAGS = ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToPatient")


# --------------------------------------------------------------------------
# The X-ray
# --------------------------------------------------------------------------


@dataclass
class XRay:
    """An X-ray image ready for registration.

    Attributes:
        image: (H, W) float64, line-integral convention (bone bright, larger =
            more attenuation), row 0 = detector row 0.
        detector: the full geometry when the file states it (DICOM with
            DistanceSourceToDetector and a pixel spacing), else ``None``.
        pixel_spacing: (row mm, column mm) when the file states it (DICOM,
            NRRD/NIfTI/MHA), else ``None``.
        clinical: (primary_deg LAO+/RAO-, secondary_deg CRA+/CAU-,
            source_to_isocenter_mm) from DICOM, else ``None``.
        mask: (H, W) bool, ``False`` on collimated, shuttered or padded
            pixels; ``None`` when none were found.
        meta: what was read and from where. Keys include ``path``,
            ``format``, ``frame``, ``shape_read`` (H, W before the crop),
            ``intensity`` (the conversion applied: ``"line_integral"`` =
            values kept, ``"intensity"`` = -log(I / I0) with ``i0``,
            ``"reflected"`` = ``reflect_reference - v``) with
            ``intensity_reason``, ``flip_rows``/``flip_cols``,
            ``collimation`` (detected margins), ``crop`` (margins removed,
            top, bottom, left, right), ``notes``; for DICOM also
            ``dicom_tags`` ({keyword: {tag, value, found_in}} for every tag
            used), ``pixel_spacing_source``, ``principal_point``,
            ``modality_lut``, ``missing_tags`` ({"detector": [...],
            "clinical": [...]}) and ``clinical_unavailable`` when angles were
            present but not usable.
    """

    image: torch.Tensor
    detector: Detector | None = None
    pixel_spacing: tuple[float, float] | None = None
    clinical: tuple[float, float, float] | None = None
    mask: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (int(self.image.shape[-2]), int(self.image.shape[-1]))

    def initial_pose(self, isocenter) -> torch.Tensor:
        """camera_from_world (4, 4) float64 from the clinical C-arm angles.

        ``isocenter`` is the RAS point (mm, 3 numbers) the principal ray passes
        through, e.g. the CT centre or the target anatomy; the source sits at
        the DICOM source-to-isocentre distance from it (see
        `geometry.clinical_to_pose`). Raises `InputError` naming the missing
        DICOM tags when the file gave no clinical angles.
        """
        if self.clinical is None:
            needed = ", ".join(f"{k} {_tag_number(k)}" for k in _CLINICAL_TAGS)
            missing = self.meta.get("missing_tags", {}).get("clinical")
            reason = self.meta.get("clinical_unavailable")
            source = self.meta.get("path", "this X-ray")
            if missing:
                what = f"{source} lacks the DICOM tags {', '.join(f'{k} {_tag_number(k)}' for k in missing)}"
            elif reason:
                what = f"{source}: {reason}"
            else:
                what = f"{source} ({self.meta.get('format', 'no DICOM')}) carries no C-arm angles"
            raise InputError(
                f"no initial pose: {what}. An initial pose needs {needed}; give the pose explicitly instead "
                "(geometry.clinical_to_pose with the angles read off the C-arm, or a pose JSON file)"
            )
        primary, secondary, distance = self.clinical
        return clinical_to_pose(primary, secondary, distance, isocenter, dtype=torch.float64)


# --------------------------------------------------------------------------
# Checks, collimation, crop and flip
# --------------------------------------------------------------------------


def check_xray(image: torch.Tensor, detector: Detector) -> None:
    """Raise `InputError` unless ``image`` (H, W) can be registered on ``detector``.

    Refused: anything but 2D, a size other than the detector's (rows, cols),
    NaN or infinite values, a constant image (no structure to register).
    """
    image = torch.as_tensor(image)
    if image.ndim != 2:
        raise InputError(
            f"the X-ray must be one 2D image (H, W), got shape {tuple(image.shape)}; "
            "pick one frame/slice before registering"
        )
    rows, cols = int(image.shape[0]), int(image.shape[1])
    if (rows, cols) != (detector.rows, detector.cols):
        raise InputError(
            f"the X-ray is {rows} x {cols} pixels (rows x cols) but the detector is "
            f"{detector.rows} x {detector.cols}: give the geometry of this image, or crop the image "
            "with xray.crop_xray / downsample the detector so that both describe the same pixels"
        )
    if image.numel() == 0:
        raise InputError("the X-ray image is empty (no pixels)")
    values = image.detach().double()
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise InputError(
            f"the X-ray has {bad} NaN or infinite pixel(s); fix the file or mask and fill them "
            "before registering (e.g. a -log of zero intensities: use intensity='intensity', which clamps)"
        )
    if float(values.max() - values.min()) == 0.0:
        raise InputError(
            f"the X-ray is constant (every pixel = {float(values.flatten()[0]):g}): there is no structure "
            "to register; check the file, the frame and the intensity convention"
        )


def detect_collimation(image, tol: float = COLLIMATION_TOL) -> tuple[int, int, int, int]:
    """Margins (top, bottom, left, right) in pixels of constant borders (collimator, blank, padding).

    A border band is the run of outermost rows (or columns) that are constant
    and equal to the outermost one, both within ``tol * (max - min)`` of the
    image: collimator shadows, zero padding and fully saturated borders.
    Rows and columns are peeled alternately (on what is left) until nothing
    changes, so bands on all four sides are found whatever value the corners
    take from either band. At least two rows and columns are always kept; a
    constant image gives (0, 0, 0, 0). ``image``: (H, W) tensor or array.
    """
    a = _as_2d_array(image, "detect_collimation")
    if not np.isfinite(a).all():
        raise InputError("detect_collimation: the image has NaN or infinite values; fix them first")
    span = float(a.max() - a.min()) if a.size else 0.0
    if span == 0.0:
        return (0, 0, 0, 0)
    thr = tol * span
    h, w = a.shape
    top = bottom = left = right = 0
    changed = True
    while changed:
        changed = False
        sub = a[top:h - bottom, left:w - right]
        if sub.shape[1] >= 2:
            n = _band(sub, thr, room=sub.shape[0] - 2)
            top += n
            sub = sub[n:]
            m = _band(sub[::-1], thr, room=sub.shape[0] - 2)
            bottom += m
            sub = sub[:sub.shape[0] - m]
            changed |= bool(n or m)
        if sub.shape[0] >= 2:
            n = _band(sub.T, thr, room=sub.shape[1] - 2)
            left += n
            sub = sub[:, n:]
            m = _band(sub.T[::-1], thr, room=sub.shape[1] - 2)
            right += m
            changed |= bool(n or m)
    return (top, bottom, left, right)


def _band(lines: np.ndarray, thr: float, room: int) -> int:
    """Number of leading rows of ``lines`` that are constant and equal to the first, at most ``room``."""
    if room <= 0 or lines.shape[0] == 0:
        return 0
    ref = lines[0].mean()
    flat = (lines.std(axis=1) <= thr) & (np.abs(lines.mean(axis=1) - ref) <= thr)
    n = int(np.argmin(flat)) if not flat.all() else lines.shape[0]
    return min(n, room)


def crop_detector(detector: Detector, top: int, bottom: int, left: int, right: int) -> Detector:
    """The detector of the crop ``[top : rows - bottom, left : cols - right]``.

    Same sdd and spacing, ``rows - top - bottom`` by ``cols - left - right``
    pixels, principal point ``(cx - left, cy - top)`` with (cx, cy) the
    original's (default ((W-1)/2, (H-1)/2)): every kept pixel keeps its ray.
    """
    top, bottom, left, right = _check_margins((top, bottom, left, right), detector.rows, detector.cols)
    _, _, _, cx, cy = detector.tensors()
    pp = detector.principal_point
    if isinstance(pp, torch.Tensor):
        new_pp = pp - pp.new_tensor([left, top])
    else:
        new_pp = (float(cx) - left, float(cy) - top) if pp is None else (pp[0] - left, pp[1] - top)
    return replace(detector, rows=detector.rows - top - bottom, cols=detector.cols - left - right,
                   principal_point=new_pp)


def flip_detector(detector: Detector, rows: bool = False, cols: bool = False) -> Detector:
    """The detector of the image mirrored up-down (``rows``) and/or left-right (``cols``).

    Size, sdd and spacing stay; the principal point moves with the pixels:
    cx -> W-1-cx, cy -> H-1-cy (a centred principal point stays centred).
    """
    pp = detector.principal_point
    if pp is None or not (rows or cols):
        return detector
    cx = (detector.cols - 1) - pp[0] if cols else pp[0]
    cy = (detector.rows - 1) - pp[1] if rows else pp[1]
    new_pp = torch.stack([cx, cy]) if isinstance(pp, torch.Tensor) else (cx, cy)
    return replace(detector, principal_point=new_pp)


def crop_xray(xray: XRay, top: int, bottom: int, left: int, right: int) -> XRay:
    """Remove ``top``, ``bottom``, ``left``, ``right`` pixels from the borders.

    Pixel (r, c) of the result is pixel (r + top, c + left) of ``xray``; the
    detector shrinks and its principal point shifts (`crop_detector`) so that
    every kept pixel keeps its physical ray; the mask is cropped alike and
    ``meta["crop"]`` accumulates the margins relative to the image as read.
    """
    h, w = xray.shape
    top, bottom, left, right = _check_margins((top, bottom, left, right), h, w)
    rows, cols = slice(top, h - bottom), slice(left, w - right)
    meta = copy.deepcopy(xray.meta)
    previous = meta.get("crop", (0, 0, 0, 0))
    meta["crop"] = tuple(int(p + n) for p, n in zip(previous, (top, bottom, left, right)))
    return XRay(
        image=xray.image[..., rows, cols].clone(),
        detector=None if xray.detector is None else crop_detector(xray.detector, top, bottom, left, right),
        pixel_spacing=xray.pixel_spacing,
        clinical=xray.clinical,
        mask=None if xray.mask is None else xray.mask[..., rows, cols].clone(),
        meta=meta,
    )


def _check_margins(margins, rows: int, cols: int) -> tuple[int, int, int, int]:
    try:
        values = tuple(margins)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise InputError(
            f"crop margins must be four non-negative integers (top, bottom, left, right) in pixels, got {margins!r}"
        )
    top, bottom, left, right = (int(v) for v in values)
    if top + bottom >= rows or left + right >= cols:
        raise InputError(
            f"crop (top={top}, bottom={bottom}, left={left}, right={right}) leaves no pixels of a "
            f"{rows} x {cols} image; use smaller margins"
        )
    return top, bottom, left, right


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


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

            For DICOM the explicit names describe the values after the
            modality LUT and override every tag.
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
        intensity: ``"line_integral"`` (bone bright, kept) or ``"intensity"``
            (raw detector intensity, converted to -log(I / I0) as in
            `read_xray`); ``"auto"`` means ``"line_integral"`` (no tags to tell).
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
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{name}: expected one 2D image (H, W), got shape {array.shape}")
    meta: dict = {"path": name, "format": "array", "frame": 0, "notes": []}
    geometry: dict = {} if pixel_spacing is None else {"pixel_spacing": tuple(pixel_spacing)}
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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _tag_number(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return "(?)" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _as_2d_array(image, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{what}: expected one 2D image (H, W), got shape {a.shape}")
    return a


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


def _validated(array: np.ndarray, path) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: pixel type {array.dtype} is not a real number type; an X-ray needs grayscale numbers")
    if array.ndim != 2:
        raise InputError(f"{path}: expected one 2D image, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{path} holds an empty image (shape {array.shape}); give an image with pixels")
    out = np.asarray(array, dtype=np.float64)
    bad = int((~np.isfinite(out)).sum())
    if bad:
        raise InputError(f"{path} has {bad} NaN or infinite pixel(s); fill or fix them before registering")
    if out.max() == out.min():
        raise InputError(
            f"{path} is a constant image (every pixel = {out.flat[0]:g}): there is no structure to register; "
            "check the file and the frame"
        )
    return out


def _single_frame(frame: int, path: Path, kind: str) -> None:
    if frame != 0:
        raise InputError(f"frame={frame} asked for, but {path} is a single {kind} image; use frame=0")


def _read_npy(path: Path, frame: int, meta: dict) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
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

    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"could not read {path} as an image: {exc}") from exc
    with img:
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
    from .io import _sitk

    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"could not read {path}: {str(exc).strip().splitlines()[-1]}") from exc
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
    meta["pixel_spacing_source"] = "file spacing (ITK column, row order)"
    return array, spacing


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------


def _empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return value.strip() == "" if isinstance(value, str) else len(value) == 0
    try:
        return len(value) == 0
    except TypeError:
        return False


def _search(dataset, keyword: str, depth: int = 3):
    """The first non-empty ``keyword`` in ``dataset`` or in items of its sequences (depth first)."""
    value = dataset.get(keyword)
    if not _empty(value):
        return value
    if depth == 0:
        return None
    for element in dataset:
        if element.VR == "SQ" and element.value:
            for item in element.value:
                found = _search(item, keyword, depth - 1)
                if found is not None:
                    return found
    return None


class _Tags:
    """Looks tags up at the top level, then in this frame's and the shared functional groups; records each use."""

    def __init__(self, ds, frame: int):
        self.ds = ds
        self.per_frame = None
        self.shared = None
        groups = ds.get("PerFrameFunctionalGroupsSequence")
        if groups is not None and frame < len(groups):
            self.per_frame = groups[frame]
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            self.shared = shared[0]
        self.used: dict = {}

    def get(self, keyword: str):
        value, where = self.ds.get(keyword), "top level"
        if _empty(value) and self.per_frame is not None:
            value, where = _search(self.per_frame, keyword), "per-frame functional group"
        if _empty(value) and self.shared is not None:
            value, where = _search(self.shared, keyword), "shared functional group"
        if _empty(value):
            return None, None
        self.used[keyword] = {"tag": _tag_number(keyword), "value": _plain(value), "found_in": where}
        return value, where

    def number(self, keyword: str) -> float | None:
        value, _ = self.get(keyword)
        if value is None:
            return None
        try:
            return float(value[0] if _is_multi(value) else value)
        except (TypeError, ValueError, IndexError):
            raise InputError(f"DICOM tag {keyword} {_tag_number(keyword)} is not a number: {value!r}") from None

    def numbers(self, keyword: str) -> list[float] | None:
        value, _ = self.get(keyword)
        if value is None:
            return None
        try:
            return [float(v) for v in (value if _is_multi(value) else [value])]
        except (TypeError, ValueError):
            raise InputError(f"DICOM tag {keyword} {_tag_number(keyword)} is not a list of numbers: {value!r}") from None

    def text(self, keyword: str) -> str | None:
        value, _ = self.get(keyword)
        return None if value is None else str(value).strip().upper()


def _is_multi(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _plain(value):
    """A JSON-friendly copy of a DICOM value (numbers, strings, lists of them)."""
    if hasattr(value, "VR") or type(value).__name__ == "Sequence":
        return "<sequence>"
    if isinstance(value, (str, bytes)):
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if _is_multi(value):
        return [_plain(v) for v in value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _read_dicom(path: Path, frame: int, meta: dict, force: bool) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), force=force)
    except InvalidDicomError as exc:
        raise InputError(
            f"cannot read {path}: unknown file type {_suffix(path) or '(no suffix)'} and not a DICOM file; "
            f"use one of {', '.join(XRAY_SUFFIXES)} or a DICOM file"
        ) from exc
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise InputError(f"could not read {path} as DICOM: {exc}") from exc
    meta["format"] = "dicom"
    meta["modality"] = str(ds.get("Modality", "")) or None
    meta["sop_class"] = str(ds.get("SOPClassUID", "")) or None
    if "PixelData" not in ds:
        raise InputError(f"{path} is a DICOM file without pixel data (a report or a presentation state?); give an image")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(
            f"{path} is a colour DICOM ({samples} samples per pixel, {ds.get('PhotometricInterpretation')}); "
            "an X-ray is grayscale"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta["number_of_frames"] = frames
    if frame >= frames:
        raise InputError(f"frame={frame} asked for, but {path} has {frames} frame(s); use 0..{frames - 1}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(
            f"cannot decode the pixel data of {path} (transfer syntax {getattr(syntax, 'name', syntax)}): {exc}. "
            "Install a decoder for it (e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) "
            "or convert the file to uncompressed DICOM"
        ) from exc
    if frames > 1:
        pixels = pixels[frame]
    pixels = np.asarray(pixels)
    meta["source_dtype"] = str(pixels.dtype)
    tags = _Tags(ds, frame)
    for keyword in ("Modality", "PhotometricInterpretation", "NumberOfFrames"):
        tags.get(keyword)

    masks = []
    padding = tags.number("PixelPaddingValue")
    if padding is not None:
        pad = pixels != padding
        if not pad.all():
            masks.append(pad)
            meta.setdefault("mask_sources", []).append("PixelPaddingValue")
    shutter = _shutter_mask(tags, pixels.shape, meta)
    if shutter is not None:
        masks.append(shutter)

    values = _modality_lut(ds, tags, pixels, meta)
    geometry = _dicom_geometry(tags, values.shape, frames, meta)
    geometry["auto_convention"] = _dicom_convention(tags, meta)
    geometry["masks"] = masks
    meta["dicom_tags"] = tags.used
    return values, geometry


def _modality_lut(ds, tags: _Tags, pixels: np.ndarray, meta: dict) -> np.ndarray:
    slope = tags.number("RescaleSlope")
    intercept = tags.number("RescaleIntercept")
    if slope is not None or intercept is not None:
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        meta["modality_lut"] = f"rescale: value = stored * {slope:g} + {intercept:g}"
        return pixels.astype(np.float64) * slope + intercept
    if "ModalityLUTSequence" in ds:
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        meta["modality_lut"] = "ModalityLUTSequence (0028,3000)"
        tags.used["ModalityLUTSequence"] = {"tag": _tag_number("ModalityLUTSequence"), "value": "<LUT>",
                                            "found_in": "top level"}
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    meta["modality_lut"] = "none (stored values)"
    return pixels.astype(np.float64)


def _shutter_mask(tags: _Tags, shape: tuple[int, int], meta: dict) -> np.ndarray | None:
    shapes = tags.text("ShutterShape")
    if not shapes:
        return None
    h, w = shape
    rows = np.arange(1, h + 1)[:, None]  # DICOM shutter coordinates are 1-based pixels
    cols = np.arange(1, w + 1)[None, :]
    mask = np.ones(shape, dtype=bool)
    used = []
    for kind in shapes.replace("/", "\\").split("\\"):
        kind = kind.strip()
        if kind == "RECTANGULAR":
            edges = [tags.number(k) for k in ("ShutterLeftVerticalEdge", "ShutterRightVerticalEdge",
                                              "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge")]
            if None in edges:
                meta["notes"].append("rectangular shutter without all four edges: ignored")
                continue
            left, right, upper, lower = edges
            mask &= (cols >= left) & (cols <= right) & (rows >= upper) & (rows <= lower)
            used.append(kind)
        elif kind == "CIRCULAR":
            centre = tags.numbers("CenterOfCircularShutter")
            radius = tags.number("RadiusOfCircularShutter")
            if centre is None or radius is None or len(centre) != 2:
                meta["notes"].append("circular shutter without centre and radius: ignored")
                continue
            mask &= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
            used.append(kind)
        elif kind:
            meta["notes"].append(f"{kind} display shutter not applied to the mask")
    if not used or mask.all():
        return None
    meta.setdefault("mask_sources", []).append(f"DICOM shutter ({', '.join(used)})")
    return mask


def _dicom_geometry(tags: _Tags, shape: tuple[int, int], frames: int, meta: dict) -> dict:
    out: dict = {}
    missing_detector, missing_clinical = [], []

    sdd = tags.number("DistanceSourceToDetector")
    imager = tags.numbers("ImagerPixelSpacing")
    spacing = None
    if imager is not None:
        spacing = _spacing_pair(imager, "ImagerPixelSpacing")
        meta["pixel_spacing_source"] = "ImagerPixelSpacing (0018,1164)"
    else:
        stored = tags.numbers("PixelSpacing")
        if stored is not None:
            spacing = _spacing_pair(stored, "PixelSpacing")
            factor = tags.number("EstimatedRadiographicMagnificationFactor")
            calibration = tags.text("PixelSpacingCalibrationType")
            if factor is not None and calibration == "GEOMETRY":
                spacing = (spacing[0] * factor, spacing[1] * factor)
                meta["pixel_spacing_source"] = (
                    "PixelSpacing (0028,0030) x EstimatedRadiographicMagnificationFactor (0018,1114): "
                    "ImagerPixelSpacing absent; PixelSpacingCalibrationType GEOMETRY means PixelSpacing was "
                    "scaled to the patient plane, so the factor is undone to get the detector spacing"
                )
            else:
                meta["pixel_spacing_source"] = (
                    "PixelSpacing (0028,0030) as the detector spacing: ImagerPixelSpacing (0018,1164) absent"
                )
                if factor is not None:
                    meta["notes"].append(
                        f"EstimatedRadiographicMagnificationFactor {factor:g} recorded but not applied: without "
                        "PixelSpacingCalibrationType GEOMETRY, PixelSpacing is taken at the detector"
                    )
            meta["notes"].append(meta["pixel_spacing_source"])
        else:
            missing_detector.append("ImagerPixelSpacing")
    if sdd is None:
        missing_detector.insert(0, "DistanceSourceToDetector")
    out["pixel_spacing"] = spacing
    if sdd is not None and spacing is not None:
        if sdd <= 0:
            raise InputError(f"DICOM DistanceSourceToDetector (0018,1110) must be positive, got {sdd:g} mm")
        out["detector"] = Detector(rows=shape[0], cols=shape[1], sdd=sdd, pixel_spacing=spacing)

    for keyword in ("DetectorActiveOrigin", "DetectorActiveDimensions", "FieldOfViewOrigin",
                    "FieldOfViewDimensionsInFloat", "FieldOfViewRotation", "FieldOfViewHorizontalFlip"):
        tags.get(keyword)
    located = [k for k in ("DetectorActiveOrigin", "DetectorActiveDimensions") if k in tags.used]
    meta["principal_point"] = "image centre ((W-1)/2, (H-1)/2)" + (
        f"; {' and '.join(located)} recorded but not used: they place the active area on the detector "
        "housing, not the central ray" if located else ""
    )
    if "FieldOfViewHorizontalFlip" in tags.used and str(tags.used["FieldOfViewHorizontalFlip"]["value"]).upper() == "YES":
        meta["notes"].append("FieldOfViewHorizontalFlip is YES: the stored image is mirrored; consider flip_cols=True")

    primary, where_primary = tags.get("PositionerPrimaryAngle")
    secondary, _ = tags.get("PositionerSecondaryAngle")
    distance = tags.number("DistanceSourceToPatient")
    if distance is None:
        distance = tags.number("DistanceSourceToIsocenter")
    for keyword, value in (("PositionerPrimaryAngle", primary), ("PositionerSecondaryAngle", secondary),
                           ("DistanceSourceToPatient", distance)):
        if value is None:
            missing_clinical.append(keyword)
    if not missing_clinical:
        primary, secondary = tags.number("PositionerPrimaryAngle"), tags.number("PositionerSecondaryAngle")
        moving = frames > 1 and where_primary == "top level" and any(
            any(abs(v) > 0 for v in (tags.numbers(k) or [])) for k in
            ("PositionerPrimaryAngleIncrement", "PositionerSecondaryAngleIncrement"))
        if moving:
            meta["clinical_unavailable"] = (
                "the C-arm moved during this multi-frame run (non-zero PositionerPrimary/SecondaryAngleIncrement); "
                "the top-level angles describe no single frame, so none are taken"
            )
        elif distance <= 0:
            meta["clinical_unavailable"] = f"DistanceSourceToPatient is {distance:g} mm, not a positive distance"
        else:
            out["clinical"] = (primary, secondary, distance)
    meta["missing_tags"] = {"detector": missing_detector, "clinical": missing_clinical}
    return out


def _spacing_pair(values: list[float], keyword: str) -> tuple[float, float]:
    if len(values) == 1:
        values = [values[0], values[0]]
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(
            f"DICOM {keyword} {_tag_number(keyword)} must be two positive numbers (row\\column mm), got {values}"
        )
    return (values[0], values[1])


def _dicom_convention(tags: _Tags, meta: dict) -> tuple[str, str]:
    """("keep" | "log" | "reflect", reason) for intensity="auto"."""
    relationship = tags.text("PixelIntensityRelationship")
    sign_value = tags.number("PixelIntensityRelationshipSign")
    photometric = tags.text("PhotometricInterpretation") or "MONOCHROME2"
    if relationship in ("LIN", "LOG"):
        if sign_value is None:
            sign, said = 1, "sign absent, taken as +1 (values grow with beam intensity)"
        else:
            sign, said = (1 if sign_value > 0 else -1), f"sign {int(sign_value):+d}"
        if relationship == "LIN" and sign > 0:
            return "log", f"PixelIntensityRelationship LIN, {said}: raw intensity, -log(I / I0) applied"
        if relationship == "LIN":
            return "keep", (f"PixelIntensityRelationship LIN, {said}: higher values = less beam intensity, "
                            "already bone bright; kept (offset unknown, no logarithm)")
        if sign > 0:
            return "reflect", (f"PixelIntensityRelationship LOG, {said}: log intensity (bone dark), "
                               "reflected about the open-field level")
        return "keep", f"PixelIntensityRelationship LOG, {said}: a line integral (bone bright), kept"
    what = f"PixelIntensityRelationship {relationship}" if relationship else "no LIN/LOG PixelIntensityRelationship"
    if photometric == "MONOCHROME1":
        return "reflect", (f"{what}; MONOCHROME1 shows the minimum white, so bone is stored low: "
                           "reflected about the open-field level")
    return "keep", f"{what}; {photometric} radiograph for presentation, bone bright: kept"


# --------------------------------------------------------------------------
# Intensity conventions
# --------------------------------------------------------------------------


def _apply_convention(values: np.ndarray, intensity: str, auto: tuple[str, str] | None, mask: np.ndarray,
                      meta: dict) -> np.ndarray:
    if intensity == "auto":
        action, reason = auto if auto is not None else (
            "keep", f"{meta.get('format', 'this')} files carry no intensity tags: taken as a line integral (bone bright)")
    elif intensity == "intensity":
        action, reason = "log", "intensity='intensity' given: raw intensity, -log(I / I0) applied"
    else:
        action, reason = "keep", "intensity='line_integral' given: values kept"
    meta["intensity_requested"] = intensity
    meta["intensity_reason"] = reason
    region = values[mask] if mask.any() else values.ravel()
    if action == "keep":
        meta["intensity"] = "line_integral"
        return values
    if action == "reflect":
        ref = float(np.percentile(region, I0_PERCENTILE))
        meta["intensity"] = "reflected"
        meta["reflect_reference"] = ref
        return ref - values
    return _minus_log(values, region, meta)


def _minus_log(values: np.ndarray, region: np.ndarray, meta: dict) -> np.ndarray:
    top = float(values.max())
    if top <= 0:
        raise InputError(
            "intensity conversion -log(I / I0) needs positive intensities, but the image's maximum is "
            f"{top:g}; these values are not raw intensities: use intensity='line_integral'"
        )
    floor = INTENSITY_FLOOR * top
    i0 = float(np.percentile(np.maximum(region, floor), I0_PERCENTILE))
    clamped = int((values < floor).sum())
    meta["intensity"] = "intensity"
    meta["i0"] = i0
    meta["i0_percentile"] = I0_PERCENTILE
    meta["intensity_floor"] = floor
    if clamped:
        meta["notes"].append(f"{clamped} pixel(s) below the floor {floor:g} clamped before the logarithm")
    return np.log(i0) - np.log(np.maximum(values, floor))
