"""The panel's second X-ray: its detector, and its C-arm relation to the first view.

A second view (a biplane system's other plane, or a second C-arm shot of the
same patient) constrains the CT's depth along the first view's beam, which
one view hardly sees. The registration fits one pose to both
(`DiffRegLogic.registration.views.register_views`); what it needs from the
panel is the second view's detector and ``from_first`` =
camera_2_from_camera_1, the C-arm motion between the shots. Both views'
C-arm angles about the same isocentre (the CT centre) give it:
``from_first = P2 @ inv(P1)`` with ``P = clinical_to_pose(primary,
secondary, source-to-isocentre)``. The first view's angles are the
Initial-pose fields (or its DICOM tags); the second's come from its DICOM
tags, or from the Initial-pose fields "Second view primary / secondary
angle" when *Second view's angles from its DICOM tags* is unticked.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import InputError
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector
from ..volume.ct import Volume
from . import checks
from .carm import XRayGeometry, _stated_sdd, _stated_spacing, geometry_from_xray
from .nodes import xray_from_node
from .settings import Setup

ANGLE_FIELDS_HINT = ("untick 'Second view's angles from its DICOM tags' under Initial pose and enter the second view's "
                     "primary and secondary angles")


def first_view_angles(setup: Setup, geo: XRayGeometry) -> tuple[float, float, float]:
    """(primary deg, secondary deg, source-to-isocentre mm) of the first view, to relate it to the second.

    The first X-ray's DICOM angles when it has them and either the start
    comes from a transform (the angle fields are not the start then) or the
    second view's angles come from its DICOM too (acquisition angles on both
    sides); otherwise the Initial-pose fields (their distance 0: the DICOM's).
    """
    from .settings import POSE_FROM_TRANSFORM

    from_transform = setup.initialPoseMode == POSE_FROM_TRANSFORM
    if geo.clinical is not None and (from_transform or setup.secondAnglesFromXray):
        return tuple(float(v) for v in geo.clinical)
    if from_transform:
        raise InputError(
            "a second X-ray with the start from a transform needs the first X-ray's DICOM C-arm angles to relate "
            "the two views, and it has none: start from C-arm angles under Initial pose instead")
    primary, secondary, distance = setup.primaryAngle, setup.secondaryAngle, setup.sourceToIsocenter
    if not distance > 0 and geo.clinical is not None:
        primary, secondary, distance = geo.clinical
    if not distance > 0:
        raise InputError(
            "a second X-ray needs the first view's C-arm angles and source-isocentre distance to relate the two "
            "views: enter them under Initial pose (the first X-ray has no DICOM DistanceSourceToPatient)")
    return float(primary), float(secondary), float(distance)


def second_view_angles(setup: Setup, geo2: XRayGeometry, distance: float) -> tuple[float, float, float]:
    """(primary, secondary, source-to-isocentre) of the second view: its DICOM tags, or the panel's fields."""
    if setup.secondAnglesFromXray:
        if geo2.clinical is None:
            raise InputError(f"the second X-ray '{checks.node_name(setup.secondXrayVolume)}' has no DICOM C-arm "
                             f"angles (PositionerPrimaryAngle, PositionerSecondaryAngle); {ANGLE_FIELDS_HINT}")
        primary, secondary, distance2 = geo2.clinical
        return float(primary), float(secondary), float(distance2 if distance2 and distance2 > 0 else distance)
    return float(setup.secondPrimaryAngle), float(setup.secondSecondaryAngle), float(distance)


def second_view(setup: Setup, volume: Volume, first_geo: XRayGeometry, first_detector: Detector,
                file_for_instance: Callable[[str], str] | None = None):
    """The second X-ray as a `registration.views.View` (its `XRay`, detector, mask, from_first), or None.

    Its source-to-detector distance and pixel spacing come from its DICOM
    tags, else its node spacing and the first view's distance; the principal
    point is its centre. InputError naming what is missing otherwise.
    """
    from ..registration.views import View

    node = setup.secondXrayVolume
    if node is None:
        return None
    xray = xray_from_node(node, setup.xrayIntensity, file_for_instance)
    geo = geometry_from_xray(node, file_for_instance, xray)
    sdd = _stated_sdd(geo) or float(first_detector.sdd)
    spacing = _stated_spacing(geo)
    if spacing is None:
        raise InputError(f"the second X-ray '{checks.node_name(node)}' states no pixel spacing; set it in the "
                         "Volumes module (Volume Information > Image spacing)")
    detector = Detector(geo.rows, geo.cols, float(sdd), (float(spacing[0]), float(spacing[1])))
    center = volume.center.to(torch.float64).cpu()
    first = first_view_angles(setup, first_geo)
    second = second_view_angles(setup, geo, first[2])
    p1 = clinical_to_pose(*first, center, dtype=torch.float64)
    p2 = clinical_to_pose(*second, center, dtype=torch.float64)
    return View(xray, detector, xray.mask, p2 @ torch.linalg.inv(p1), name=f"second X-ray '{checks.node_name(node)}'")
