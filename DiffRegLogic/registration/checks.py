"""Checks before any registration work: the volume, detector, X-ray, mask and start poses."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume
from ..xray.image import check_xray


def check_inputs(volume: Volume, xray, detector: Detector, mask, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The X-ray and mask in ``dtype`` on the volume's device, checked against the detector.

    ``dtype`` is the similarity's (`Measure.dtype`; float64 for the built-in
    measures: near the optimum 1 - ZNCC is ~1e-4 and float32, resolution
    6e-8 at 1, would leave the last improvements below its rounding).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    device = volume.mu.device
    check_xray(torch.as_tensor(xray), detector)
    xray = torch.as_tensor(xray).to(device=device, dtype=dtype)
    if mask is not None:
        mask = torch.as_tensor(mask).to(device=device)
        if tuple(mask.shape) != tuple(xray.shape):
            raise InputError(f"the mask is {tuple(mask.shape)} but the X-ray is {tuple(xray.shape)}")
        mask = mask.to(dtype)
        if not (mask > 0).any():
            raise InputError("the mask excludes every pixel of the X-ray")
    return xray, mask


def check_start(volume: Volume, detector: Detector, pose: torch.Tensor) -> None:
    """Refuse a start pose (4, 4) that puts the CT centre behind the source or beyond the detector."""
    center = volume.center.to(torch.float64).cpu()
    depth = float(pose[2, :3] @ center + pose[2, 3])
    if depth <= 0:
        raise InputError(
            f"at the initial pose the CT centre is {-depth:.0f} mm behind the X-ray source (camera z <= 0); "
            "check the pose convention (camera_from_world, source at the origin looking along +z)"
        )
    if depth >= float(detector.sdd):
        raise InputError(
            f"at the initial pose the CT centre is {depth:.0f} mm from the source, beyond the detector "
            f"(SDD {float(detector.sdd):.0f} mm); check the pose and the source-to-detector distance"
        )
