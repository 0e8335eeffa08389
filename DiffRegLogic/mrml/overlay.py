"""The DRR/X-ray overlay in the slice views: blend, difference or checkerboard, rotated to the detector plane."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..figures.compare import checkerboard_map, difference_map, zscore
from .matrices import ijk_to_ras
from .nodes import _voxels, _write_volume
from .outputs import Outputs
from .settings import OVERLAY_MODES


def overlay_image(xray: np.ndarray, drr: np.ndarray, mode: str, tiles: int = 8) -> np.ndarray | None:
    """float64 (H, W) image of the slice views for ``mode``; None for ``blend`` (the views composite the two).

    ``difference``: z-scored X-ray minus z-scored DRR, in standard deviations
    (`DiffRegLogic.figures.compare.difference_map`). ``checkerboard``: the
    z-scored X-ray and DRR in alternating square tiles, ``tiles`` of them
    along the shorter side, the X-ray at the top left (the rule of
    `DiffRegLogic.figures.compare.checkerboard_mask`, as in the report
    pictures).
    """
    if mode == "blend":
        return None
    if mode == "difference":
        return difference_map(xray, drr)
    if mode == "checkerboard":
        return checkerboard_map(zscore(xray), zscore(drr), tiles)
    raise InputError(f"unknown overlay mode {mode!r}; choose one of {', '.join(OVERLAY_MODES)}")


def show_overlay(scene, outputs: Outputs, mode: str = "blend", opacity: float = 0.5,
                 views: tuple[str, ...] = ("Red",)) -> None:
    """Set the slice views: X-ray copy under the DRR (blend), or the difference/checkerboard volume alone.

    Each named slice view is rotated to the detector plane. (Fitting the
    field of view needs the application; the Slicer module does it.)
    """
    if mode not in OVERLAY_MODES:
        raise InputError(f"unknown overlay mode {mode!r}; choose one of {', '.join(OVERLAY_MODES)}")
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"overlay opacity must be between 0 and 1, got {opacity}")
    if mode != "blend":
        xray, drr = _voxels(outputs.xray_copy), _voxels(outputs.drr)
        if xray is None or drr is None:
            raise InputError("there is no DRR yet: press Render DRR or Register first")
        if xray.shape != drr.shape:
            raise InputError("the DRR is a live preview at a coarser size; show the difference when registration ends")
        _write_volume(outputs.overlay, overlay_image(xray, drr, mode), ijk_to_ras(outputs.xray_copy))
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() not in views:
            continue
        if mode == "blend":
            composite.SetBackgroundVolumeID(outputs.xray_copy.GetID())
            composite.SetForegroundVolumeID(outputs.drr.GetID())
            composite.SetForegroundOpacity(float(opacity))
        else:
            composite.SetBackgroundVolumeID(outputs.overlay.GetID())
            composite.SetForegroundVolumeID(None)
        composite.SetCompositing(composite.Alpha)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if slice_node.GetLayoutName() in views:
            slice_node.RotateToVolumePlane(outputs.xray_copy)
            slice_node.SetSliceVisible(True)  # the detector image in 3D, where the C-arm was
