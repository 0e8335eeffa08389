"""Checks before any registration work: the volume, detector, X-ray, mask, start poses and pyramid sizes.

Each raises `InputError` saying what is wrong and what to do, before the
registration renders anything heavy; none changes its inputs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..drr.rendering import render
from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import MAX_START_PIXELS, MIN_DETECTOR_SIDE_REGISTRATION
from ..volume.ct import Volume
from ..xray.image import check_xray
from .pyramid import Level, level_detector

MIN_CONTRAST = 1e-6
"""Smallest range (max - min, intensity units) of the X-ray inside the mask and of a start's DRR.

The similarities regularise every variance with EPS_ABS = 1e-20
(`DiffRegLogic.similarity`), so an image whose values span less than
1e4 * sqrt(EPS_ABS) would have its correlation visibly damped, and one
spanning ~1e-160 has no variance at all in float64.
"""
HALF_PRECISION = (torch.float16, torch.bfloat16)
"""CT dtypes registration refuses: the renderers' pose gradients overflow in them (NaN on the first step)."""


def check_volume(volume: Volume) -> None:
    """Refuse anything but a `Volume` with at least one attenuating voxel in float32 or float64."""
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if volume.mu.dtype in HALF_PRECISION:
        raise InputError(
            f"the CT is stored in {volume.mu.dtype}: registration needs a float32 or float64 CT (the DRR's "
            "gradient with respect to the pose overflows in half precision); convert it with "
            "Volume(volume.mu.float(), volume.affine)"
        )
    if not float(volume.mu.detach().amax()) > 0:  # a reduction, no volume-sized temporary
        raise InputError(
            "the CT has no attenuating voxels (mu <= 0 everywhere: air or less): its DRR is empty at every pose, "
            "so there is nothing to register; check the HU-to-mu conversion and that the right series was loaded"
        )


def check_detector(detector: Detector) -> None:
    """Refuse anything but a `Detector` (its own checks ran when it was made)."""
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")


def _image(value, name: str) -> torch.Tensor:
    """A torch tensor or numpy array of real numbers as a (detached) tensor; InputError for anything else."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise InputError(f"the {name} has numpy dtype {value.dtype}; give numbers (a float or integer image)")
        value = torch.from_numpy(np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False)))
    elif not isinstance(value, torch.Tensor):
        raise InputError(
            f"the {name} must be a torch tensor or numpy array (H, W), got {type(value).__name__}"
            + ("; read a file with DiffRegLogic.xray.read_xray first" if isinstance(value, str) else "")
        )
    if value.is_complex() or (value.dtype == torch.bool and name == "X-ray"):
        what = "real intensities (float or integer)" if name == "X-ray" else "a bool mask or weights in [0, 1]"
        raise InputError(f"the {name} has dtype {value.dtype}; give {what}")
    return value.detach()


def check_inputs(volume: Volume, xray, detector: Detector, mask,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The X-ray and mask as new tensors in ``dtype`` on the volume's device, checked against the detector.

    ``dtype`` is the similarity's (`Measure.dtype`; float64 for the built-in
    measures: near the optimum 1 - ZNCC is ~1e-4 and float32, resolution
    6e-8 at 1, would leave the last improvements below its rounding). The
    mask is bool or numbers in [0, 1] (H, W); the X-ray must have contrast
    inside it.
    """
    check_volume(volume)
    check_detector(detector)
    device = volume.mu.device
    image = _image(xray, "X-ray")
    check_xray(image, detector)
    image = image.to(device=device, dtype=dtype, copy=True)
    if mask is None:
        _check_contrast(image, None)
        return image, None
    mask = _image(mask, "mask")
    if tuple(mask.shape) != tuple(image.shape):
        raise InputError(f"the mask is {tuple(mask.shape)} but the X-ray is {tuple(image.shape)}; "
                         "give one weight per X-ray pixel")
    mask = mask.to(device=device, dtype=dtype, copy=True)
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()) or bool((mask > 1).any()):
        raise InputError("the mask must hold weights in [0, 1] (bool, or 0 = ignore a pixel, 1 = full weight); "
                         "for a 0/255 label image pass (mask > 0)")
    inside = mask > 0
    if not bool(inside.any()):
        raise InputError("the mask excludes every pixel of the X-ray (all weights 0); pass a mask that keeps the "
                         "region to register, or mask=None")
    _check_contrast(image, inside)
    return image, mask


def _check_contrast(image: torch.Tensor, inside: torch.Tensor | None) -> None:
    values = image if inside is None else image[inside]
    span = float(values.max() - values.min())
    if span < MIN_CONTRAST:
        where = " inside the mask" if inside is not None else ""
        raise InputError(
            f"the X-ray has no contrast{where}: its values span {span:.3g} (from {float(values.min()):.6g}), less "
            f"than {MIN_CONTRAST:g}, so no similarity can see structure in it; "
            + ("widen the mask or check the image" if inside is not None else "check the image, or rescale it")
        )


def check_start(volume: Volume, detector: Detector, pose: torch.Tensor, what: str = "the initial pose") -> None:
    """Refuse a start pose (4, 4) that puts the CT centre behind the source or beyond the detector.

    ``what`` names the pose in the message.
    """
    center = volume.center.to(torch.float64).cpu()
    depth = float(pose[2, :3] @ center + pose[2, 3])
    if depth <= 0:
        raise InputError(
            f"at {what} the CT centre is {-depth:.0f} mm behind the X-ray source (camera z <= 0); "
            "check the pose convention (camera_from_world, source at the origin looking along +z)"
        )
    if depth >= float(detector.sdd):
        raise InputError(
            f"at {what} the CT centre is {depth:.0f} mm from the source, beyond the detector "
            f"(SDD {float(detector.sdd):.0f} mm); check the pose and the source-to-detector distance"
        )


def check_level_sizes(detector: Detector, factors, n_starts: int, select_best: bool) -> None:
    """Refuse pyramid levels too small to register on, and batches too large to render together.

    ``factors`` are `RegistrationOptions.levels`; ``n_starts`` starts render
    together on the first level (on every level unless ``select_best``).
    Limits: `MIN_DETECTOR_SIDE_REGISTRATION` pixels per side,
    `MAX_START_PIXELS` starts x pixels.
    """
    for index, factor in enumerate(factors):
        rows, cols = level_detector(detector, factor).shape
        if min(rows, cols) < MIN_DETECTOR_SIDE_REGISTRATION:
            largest = min(detector.rows, detector.cols) / MIN_DETECTOR_SIDE_REGISTRATION
            todo = (f"use factors of at most {largest:g} for this detector" if largest >= 1
                    else "register a larger X-ray")
            raise InputError(
                f"level {index} (levels[{index}] = {factor:g}) shrinks the {detector.rows} x {detector.cols} "
                f"detector to {rows} x {cols} pixels; a registration level needs at least "
                f"{MIN_DETECTOR_SIDE_REGISTRATION} pixels per side: {todo}"
            )
        together = (n_starts if index == 0 or not select_best else 1) * rows * cols
        if together > MAX_START_PIXELS:
            raise InputError(
                f"{n_starts} starts x {rows} x {cols} pixels on level {index} (levels[{index}] = {factor:g}) = "
                f"{together:.3g} pixels rendered together, more than the limit of {MAX_START_PIXELS} "
                "(MAX_START_PIXELS); lower n_starts, or start on a coarser level (a larger first factor in levels)"
            )


def check_start_drrs(level: Level, poses: torch.Tensor, renderer: str, render_options: dict,
                     select_best: bool) -> None:
    """Refuse starts whose DRR on the coarsest ``level`` has no contrast inside its mask (the CT projects off it).

    One render of the starts ``poses`` (B, 4, 4) without gradients. With
    ``select_best`` (a multi-start) only all starts off the detector are
    refused; otherwise each start must see the CT.
    """
    with torch.no_grad():
        drr = render(level.volume, level.detector, poses, renderer, **render_options)
    inside = torch.ones_like(drr[0], dtype=torch.bool) if level.mask is None else (level.mask > 0).to(drr.device)
    values = drr[:, inside]
    flat = (values.amax(1) - values.amin(1) < MIN_CONTRAST).cpu()
    bad = torch.nonzero(flat).flatten().tolist()
    if bad and (not select_best or len(bad) == poses.shape[0]):
        if poses.shape[0] == 1:
            which = "the start pose"
        else:
            which = f"start(s) {bad[:10]}" + (" ..." if len(bad) > 10 else "") + f" of {poses.shape[0]}"
        where = " inside the mask" if level.mask is not None else ""
        raise InputError(
            f"at {which} the CT does not project onto the detector{where}: the DRR on the coarsest level has "
            f"no contrast (its values span less than {MIN_CONTRAST:g}), so the similarity has nothing to compare; "
            "check the initial pose (camera_from_world, mm), the detector geometry and the CT's attenuation values"
        )


def check_start_footprints(level: Level, poses: torch.Tensor, select_best: bool) -> None:
    """Refuse starts at which the CT's footprint covers none of the X-ray's weighted pixels (``footprint_mask``).

    ``poses`` (B, 4, 4) on the coarsest ``level``; with ``select_best`` only
    all starts uncovered are refused (as `check_start_drrs`).
    """
    from ..drr.footprint import footprint_mask

    covered = footprint_mask(level.volume, level.detector, poses, exclude_cut_faces=True)
    if level.mask is not None:
        covered = covered * (level.mask > 0).to(covered)
    empty = torch.nonzero(covered.flatten(1).amax(1) <= 0).flatten().tolist()
    if empty and (not select_best or len(empty) == poses.shape[0]):
        where = " inside the mask" if level.mask is not None else ""
        raise InputError(
            f"the CT's footprint (the pixels whose rays cross the CT's box, not through a face where the CT was cut "
            f"through the patient) covers none of the X-ray{where} at the "
            f"start pose{'s' if poses.shape[0] > 1 else ''}: a truncated CT, or a start that puts it off the "
            "detector; check the initial pose and the geometry, or register without --footprint-mask "
            "(footprint_mask=False)"
        )
