"""The intra-operative X-ray as the engine sees it: `XRay` and the checks an image must pass.

An `XRay` holds an (H, W) float64 image in the **line-integral convention**
of the DRR (larger = more attenuation, bone bright), the `Detector` when the
file states it, the clinical C-arm angles for an initial pose, and a mask of
collimated borders. `DiffRegLogic.xray.readers` builds it from files or
arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector

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
