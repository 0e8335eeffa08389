"""Reading an X-ray's DICOM file: pixels through the modality LUT, C-arm geometry, intensity tags, shutters.

Every tag used is looked up at the top level, then in the frame's and the
shared functional groups (enhanced multi-frame files), and recorded in
``meta["dicom_tags"]`` with its number, value and where it was found. The
tags and their meaning are listed in `DiffRegLogic.xray.readers.read_xray`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import MAX_DETECTOR_PIXELS, MAX_DETECTOR_SIDE, PIXEL_SPACING_RANGE_MM, SDD_RANGE_MM, check_number
from .files import XRAY_SUFFIXES, _suffix
from .image import FLOAT32_MAX


def _tag_number(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return "(?)" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


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
            number = float(value[0] if _is_multi(value) else value)
        except (TypeError, ValueError, IndexError):
            number = math.nan
        if not math.isfinite(number):
            raise InputError(f"DICOM tag {keyword} {_tag_number(keyword)} is not a finite number: {value!r}; "
                             "fix or remove the tag") from None
        return number

    def numbers(self, keyword: str) -> list[float] | None:
        value, _ = self.get(keyword)
        if value is None:
            return None
        try:
            numbers = [float(v) for v in (value if _is_multi(value) else [value])]
        except (TypeError, ValueError):
            numbers = [math.nan]
        if not all(math.isfinite(v) for v in numbers):
            raise InputError(f"DICOM tag {keyword} {_tag_number(keyword)} is not a list of finite numbers: {value!r}; "
                             "fix or remove the tag") from None
        return numbers

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
    with warnings.catch_warnings():  # pydicom warns of every odd value; what matters is checked below
        warnings.simplefilter("ignore")
        return _read_dataset(path, frame, meta, force)


def _read_dataset(path: Path, frame: int, meta: dict, force: bool) -> tuple[np.ndarray, dict]:
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
    rows, cols = (int(v) if isinstance(v, (int, np.integer)) else 0 for v in (ds.get("Rows"), ds.get("Columns")))
    if rows > MAX_DETECTOR_SIDE or cols > MAX_DETECTOR_SIDE or rows * cols > MAX_DETECTOR_PIXELS:
        raise InputError(f"{path}: a {rows} x {cols} DICOM image is larger than DiffReg reads ({MAX_DETECTOR_SIDE} "
                         f"pixels per side, {MAX_DETECTOR_PIXELS} in all); downsample it first")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        if "less than expected" in str(exc) or isinstance(exc, EOFError):
            raise InputError(f"{path}: the DICOM pixel data is incomplete ({exc}); the file was cut short or its "
                             "Rows/Columns/BitsAllocated tags are wrong: copy or export it again") from exc
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
        with np.errstate(all="ignore"):
            values = pixels.astype(np.float64) * slope + intercept
        top = float(np.abs(values).max()) if values.size else 0.0
        if not top <= FLOAT32_MAX:
            raise InputError(f"DICOM RescaleSlope {slope:g} / RescaleIntercept {intercept:g} take the pixel values to "
                             f"{top:.3g}, beyond float32's range (~3.4e38) that DiffReg registers in; fix the tags")
        return values
    if "ModalityLUTSequence" in ds:
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        meta["modality_lut"] = "ModalityLUTSequence (0028,3000)"
        tags.used["ModalityLUTSequence"] = {"tag": _tag_number("ModalityLUTSequence"), "value": "<LUT>",
                                            "found_in": "top level"}
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        if not np.isfinite(values).all() or (values.size and float(np.abs(values).max()) > FLOAT32_MAX):
            raise InputError("the DICOM ModalityLUTSequence (0028,3000) gives NaN, infinite or beyond-float32 "
                             "values; fix or remove the LUT")
        return values
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
        check_number("DICOM DistanceSourceToDetector (0018,1110)", sdd, *SDD_RANGE_MM, unit="mm")
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
    low, high = PIXEL_SPACING_RANGE_MM
    if len(values) != 2 or not all(math.isfinite(v) and low <= v <= high for v in values):
        raise InputError(
            f"DICOM {keyword} {_tag_number(keyword)} must be two numbers in {low:g}..{high:g} (row\\column mm), "
            f"got {values}; fix the tag"
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
