"""The intra-operative X-ray as the engine sees it: `XRay` and the checks an image must pass.

An `XRay` holds an (H, W) float64 image in the **line-integral convention**
of the DRR (larger = more attenuation, bone bright), the `Detector` when the
file states it, the clinical C-arm angles for an initial pose, and a mask of
collimated borders. `DiffRegLogic.xray.readers` builds it from files or
arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector
from ..limits import MAX_DETECTOR_PIXELS, MAX_DETECTOR_SIDE, PIXEL_SPACING_RANGE_MM, check_number
from ..volume.ct import FLOAT32_MAX

CLINICAL_TAGS = ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToPatient")
"""The DICOM tags an initial pose from C-arm angles needs."""


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

    def __post_init__(self) -> None:
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 2 or not self.image.is_floating_point():
            got = tuple(self.image.shape) if isinstance(self.image, torch.Tensor) else type(self.image).__name__
            raise InputError(f"XRay image must be a 2D floating-point torch tensor (H, W), got {got}; "
                             "build one with xray.xray_from_array")
        _check_values(self.image, "XRay image")
        if self.detector is not None and not isinstance(self.detector, Detector):
            raise InputError(f"XRay detector must be a Detector or None, got {type(self.detector).__name__}")
        if self.mask is not None and (not isinstance(self.mask, torch.Tensor) or self.mask.dtype != torch.bool
                                      or tuple(self.mask.shape) != tuple(self.image.shape)):
            raise InputError(f"XRay mask must be a bool tensor of the image's shape {tuple(self.image.shape)}, got "
                             f"{getattr(self.mask, 'dtype', type(self.mask).__name__)} "
                             f"{tuple(getattr(self.mask, 'shape', ()))}")
        if self.pixel_spacing is not None:
            spacing = tuple(self.pixel_spacing) if isinstance(self.pixel_spacing, (tuple, list)) else ()
            if len(spacing) != 2:
                raise InputError(f"XRay pixel_spacing must be (row mm, column mm) or None, got {self.pixel_spacing!r}")
            for name, value in zip(("row", "column"), spacing):
                check_number(f"XRay pixel_spacing ({name})", value, *PIXEL_SPACING_RANGE_MM, unit="mm")
        if self.clinical is not None:
            angles = tuple(self.clinical) if isinstance(self.clinical, (tuple, list)) else ()
            if len(angles) != 3:
                raise InputError(f"XRay clinical must be (primary deg, secondary deg, source-to-isocenter mm) or None, "
                                 f"got {self.clinical!r}")
            for name, value in zip(("primary angle", "secondary angle", "source-to-isocenter distance"), angles):
                check_number(f"XRay clinical {name}", value)
        if not isinstance(self.meta, dict):
            raise InputError(f"XRay meta must be a dict, got {type(self.meta).__name__}")

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
            from .dicom import _tag_number

            needed = ", ".join(f"{k} {_tag_number(k)}" for k in CLINICAL_TAGS)
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
    if image.is_complex() or image.dtype == torch.bool:
        raise InputError(f"the X-ray must hold real numbers, got {image.dtype}")
    values = image.detach().double()
    _check_values(values, "the X-ray")
    if float(values.max() - values.min()) == 0.0:
        raise InputError(
            f"the X-ray is constant (every pixel = {float(values.flatten()[0]):g}): there is no structure "
            "to register; check the file, the frame and the intensity convention"
        )


def _check_values(image: torch.Tensor, name: str) -> None:
    """Refuse NaN/infinite values and values beyond float32 (the precision DRRs are compared in)."""
    if not image.is_floating_point() or image.numel() == 0:
        return
    values = image.detach()
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise InputError(
            f"{name} has {int((~finite).sum())} NaN or infinite pixel(s); fix the file or mask and fill them "
            "before registering (e.g. a -log of zero intensities: use intensity='intensity', which clamps)"
        )
    top = float(values.abs().max())
    if top > FLOAT32_MAX:
        raise InputError(f"{name} has values up to {top:.3g}, beyond float32's range (~3.4e38) that DiffReg "
                         "registers in; rescale the image")


def _check_size(shape, path) -> None:
    """Refuse an image larger than `limits.MAX_DETECTOR_SIDE` per side or `limits.MAX_DETECTOR_PIXELS` in all."""
    pixels = int(np.prod([int(n) for n in shape], dtype=object))
    if max((int(n) for n in shape), default=0) > MAX_DETECTOR_SIDE or pixels > MAX_DETECTOR_PIXELS:
        raise InputError(f"{path}: an image of shape {tuple(int(n) for n in shape)} is larger than DiffReg reads "
                         f"({MAX_DETECTOR_SIDE} pixels per side, {MAX_DETECTOR_PIXELS} in all); downsample it first")


def _validated(array: np.ndarray, path) -> np.ndarray:
    """The (H, W) image as float64, checked on the values as read: real, finite, within float32, not constant."""
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: pixel type {array.dtype} is not a real number type; an X-ray needs grayscale numbers")
    if array.ndim != 2:
        raise InputError(f"{path}: expected one 2D image, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{path} holds an empty image (shape {array.shape}); give an image with pixels")
    _check_size(array.shape, path)
    if array.dtype.kind == "f":  # before any cast: 1e300 is finite in float64 but not in the float32 of rendering
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(f"{path} has {bad} NaN or infinite pixel(s); fill or fix them before registering")
        top = float(np.abs(array).max())
        if top > FLOAT32_MAX:
            raise InputError(f"{path}: pixel values reach {top:.3g}, beyond float32's range (~3.4e38) that DiffReg "
                             "registers in; rescale the image (e.g. to 0..1 or detector counts) and save it again")
    out = np.asarray(array, dtype=np.float64)
    if out.max() == out.min():
        raise InputError(
            f"{path} is a constant image (every pixel = {out.flat[0]:g}): there is no structure to register; "
            "check the file and the frame"
        )
    return out
