"""Poses and transform nodes: the output transform of a pose, the pose of a transform node, the start of a setup.

``transformMeaning`` says what a transform node holds (see `DiffRegLogic.mrml`):
``"C-arm in patient"`` (matrix to parent = world_from_camera) or
``"patient in C-arm"`` (camera_from_world x the CT's parent-to-world).
`TransformInitializer` is the registration's initialiser plug point for a
transform node; `initializer_from_setup` picks it or the C-arm angles.
`network_initializer` loads the pose network of ``poseModelPath`` (start mode
"pose network (model file)"): it looks at the X-ray, so its start is
computed where the X-ray is known (`DiffRegLogic.mrml.actions.read_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import geometry
from ..errors import InputError
from ..registration.initializers import ClinicalAngles
from . import checks
from .carm import XRayGeometry
from .matrices import _to_world, parent_to_world
from .settings import (CARM_IN_PATIENT, PATIENT_IN_CARM, POSE_FROM_NETWORK, POSE_FROM_TRANSFORM, TRANSFORM_MEANINGS,
                       Setup, path_is_set)

NETWORK_HYPOTHESES = 4
"""Start poses the pose network hands to the registration's multi-start (its prediction + 3 test-time variants)."""


def _inverse(matrix: np.ndarray, what: str) -> np.ndarray:
    """Inverse of a (4, 4) matrix; InputError naming ``what`` when it is not finite or singular."""
    if not np.isfinite(matrix).all():
        raise InputError(f"{what} has NaN or infinite entries; set a rigid matrix in the Transforms module")
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        raise InputError(f"{what} is singular; set a rigid matrix in the Transforms module") from None


def transform_from_pose(pose, meaning: str, ct_node, ct_parent: np.ndarray | None = None) -> np.ndarray:
    """Matrix to parent (4, 4) of the output transform for camera_from_world ``pose`` (see module docstring).

    ``ct_parent``: the CT's parent-to-world (4, 4) the pose was found in
    (default: read now). A registration passes the one it read at its start,
    so writing a transform the CT sits under never compounds.
    """
    pose = np.asarray(torch.as_tensor(pose, dtype=torch.float64).cpu(), dtype=np.float64)
    if meaning == CARM_IN_PATIENT:
        return _inverse(pose, "the pose")
    if meaning == PATIENT_IN_CARM:
        return pose @ (parent_to_world(ct_node) if ct_parent is None else np.asarray(ct_parent, dtype=np.float64))
    raise InputError(f"unknown transform meaning {meaning!r}; choose one of {', '.join(TRANSFORM_MEANINGS)}")


def pose_from_transform(transform_node, meaning: str, ct_node) -> torch.Tensor:
    """camera_from_world (4, 4) float64 from a transform node read with ``meaning`` (inverse of `transform_from_pose`).

    The node's own parent transforms are included (its matrix to world).
    InputError for anything but a linear transform node with a finite,
    invertible, rigid matrix.
    """
    if transform_node is None:
        raise InputError("no initial transform selected: pick one under Initial pose, or start from C-arm angles")
    name = checks.node_name(transform_node)
    if not checks.is_node(transform_node, "vtkMRMLTransformNode"):
        raise InputError(f"initial transform '{name}' is not a transform node; pick a linear transform under "
                         "Initial pose > Initial transform")
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(f"initial transform '{name}' is not linear; pick a linear transform")
    m = _to_world(transform_node)
    if meaning == CARM_IN_PATIENT:
        pose = _inverse(m, f"initial transform '{name}' (with its parents)")
    elif meaning == PATIENT_IN_CARM:
        _inverse(m, f"initial transform '{name}' (with its parents)")
        pose = m @ _inverse(parent_to_world(ct_node), f"the parent transform of CT '{checks.node_name(ct_node)}'")
    else:
        raise InputError(f"unknown transform meaning {meaning!r}; choose one of {', '.join(TRANSFORM_MEANINGS)}")
    return geometry.check_pose(torch.from_numpy(pose), name=f"initial transform '{name}'")[0]


@dataclass(frozen=True)
class TransformInitializer:
    """Initialiser: the pose a transform node holds, read with ``meaning`` (the CT node for "patient in C-arm")."""

    transform_node: Any
    meaning: str
    ct_node: Any

    def __call__(self, xray, detector, volume) -> torch.Tensor:
        return pose_from_transform(self.transform_node, self.meaning, self.ct_node)[None]


def initializer_from_setup(setup: Setup, geo: XRayGeometry):
    """The setup's start as an initialiser: its transform node, or its C-arm angles about the CT centre.

    Unset C-arm fields (distance 0) come from the X-ray's DICOM tags
    together, as `DiffRegLogic.mrml.carm.fill_geometry` fills them. The
    pose network's start needs the X-ray (`network_initializer`): ValueError.
    """
    if setup.initialPoseMode == POSE_FROM_NETWORK:
        raise ValueError("the pose network's start depends on the X-ray: DiffRegLogic.mrml.actions.read_inputs "
                         "computes it (network_initializer), not the settings alone")
    if setup.initialPoseMode == POSE_FROM_TRANSFORM:
        if setup.initialTransform is None:
            pose_from_transform(None, setup.transformMeaning, setup.inputVolume)  # raises the message
        return TransformInitializer(setup.initialTransform, setup.transformMeaning, setup.inputVolume)
    checks.check_pose_fields(setup)
    distance = setup.sourceToIsocenter
    primary, secondary = setup.primaryAngle, setup.secondaryAngle
    if not distance > 0 and geo.clinical is not None:
        primary, secondary, distance = geo.clinical
    if not distance > 0:
        raise InputError(
            "the source-to-isocentre distance is missing (no DICOM DistanceSourceToPatient (0018,1111)); enter it "
            "(mm) under Initial pose"
        )
    return ClinicalAngles(primary, secondary, distance)


def initial_pose(setup: Setup, volume, geo: XRayGeometry) -> torch.Tensor:
    """camera_from_world (4, 4) float64 of the start: a transform node, or C-arm angles about the CT centre."""
    pose = initializer_from_setup(setup, geo)(None, None, volume)
    return geometry.check_pose(pose, name="the initial pose (Initial pose section)")[0]


def network_initializer(setup: Setup, volume, detector, device=None):
    """`DiffRegLogic.learning.inference.PoseNetworkInitializer` of the setup's ``poseModelPath``.

    ``volume`` and ``detector`` are the registration's: the model file
    refuses another CT or another detector with its own message (InputError).
    ``device``: where the network runs (default: the volume's device). Returns a
    callable ``(xray, detector, volume) -> (K, 4, 4)`` with K = `NETWORK_HYPOTHESES`.
    """
    import os

    from ..learning.inference import PoseNetworkInitializer

    path = setup.poseModelPath
    if not path_is_set(path):
        raise InputError("no pose network selected: choose its model file (.pt) under Initial pose > Model file, "
                         "or train one under Train pose network")
    if not os.path.isfile(path):
        raise InputError(f"the pose network model file {path} does not exist; choose the .pt file 'Train pose "
                         "network' saved (Initial pose > Model file)")
    device = volume.mu.device if device is None else device
    return PoseNetworkInitializer.from_file(str(path), volume, detector, hypotheses=NETWORK_HYPOTHESES,
                                            device=str(device))
