"""The DiffReg self-test scenario, shared by the Slicer module's ``DiffRegTest`` and the pytest suite.

`build_case` puts the built-in chest phantom (HU) and a simulated X-ray (a
DRR of it at a known C-arm pose, stored as Slicer's DICOM reader stores a
radiograph) into a scene as nodes, and a `Setup` whose C-arm angles and
distance are off from the truth. After a registration, `check_case` measures
the mTRE of the output transform against the known pose and checks that the
input nodes were not modified. Synthetic data only, no downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import evaluation
from ..drr.rendering import render
from ..geometry.carm import clinical_to_pose
from ..geometry.detector import Detector
from ..volume.ct import Volume
from ..volume.phantoms import chest_phantom_hu
from .carm import geometry_from_xray
from .matrices import ijk_to_ras
from .nodes import volume_from_node, voxels_of, write_volume_array
from .poses import initial_pose, pose_from_transform
from .settings import CARM_IN_PATIENT, Setup

SDD_MM = 1000.0
SOURCE_TO_ISOCENTER_MM = 600.0
ROWS, COLS, PIXEL_MM = 60, 64, 8.0  # coarse: the self-test runs in seconds on a CPU
TRUE_ANGLES_DEG = (20.0, -10.0)  # primary (LAO+), secondary (CRA+)
START_OFFSET = (4.0, -3.0, 25.0)  # degrees, degrees, mm added to the true angles and distance
MTRE_LIMIT_MM = 1.0


@dataclass
class SelfTestCase:
    setup: Setup
    truth: torch.Tensor  # camera_from_world (4, 4) float64 of the simulated X-ray
    volume: Volume
    inputs: dict  # node ID -> (voxels, IJK->RAS, parent transform ID) before the run


def _snapshot(node) -> tuple[np.ndarray, np.ndarray, str | None]:
    return voxels_of(node), ijk_to_ras(node), node.GetTransformNodeID()


def _volume_node(scene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    write_volume_array(node, array, ijk_to_ras)
    return node


def build_case(scene, device: str = "cpu") -> SelfTestCase:
    """Phantom CT node + simulated X-ray node + a setup starting off the truth; returns the case."""
    hu, grid = chest_phantom_hu(shape_ijk=(48, 42, 36), spacing=(6.0, 6.0, 7.0))
    ct = _volume_node(scene, hu.numpy().astype(np.float32), grid.numpy(), "DiffReg self-test CT")
    volume = volume_from_node(ct)
    truth = clinical_to_pose(*TRUE_ANGLES_DEG, SOURCE_TO_ISOCENTER_MM, volume.center)
    detector = Detector(ROWS, COLS, SDD_MM, (PIXEL_MM, PIXEL_MM))
    with torch.no_grad():
        image = render(volume, detector, truth)[0].numpy()
    # as Slicer loads a DX/XA image: IJK->RAS = diag(-sx, -sy, 1) at the origin, one slice
    xray = _volume_node(scene, image[None].astype(np.float32), np.diag([-PIXEL_MM, -PIXEL_MM, 1.0, 1.0]),
                        "DiffReg self-test X-ray")
    d_primary, d_secondary, d_distance = START_OFFSET
    setup = Setup(inputVolume=ct, xrayVolume=xray, sdd=SDD_MM, primaryAngle=TRUE_ANGLES_DEG[0] + d_primary,
                  secondaryAngle=TRUE_ANGLES_DEG[1] + d_secondary,
                  sourceToIsocenter=SOURCE_TO_ISOCENTER_MM + d_distance, levels="4 2 1", device=device)
    inputs = {node.GetID(): _snapshot(node) for node in (ct, xray)}
    return SelfTestCase(setup, truth, volume, inputs)


def check_case(case: SelfTestCase) -> dict:
    """mTRE (mm) of the output transform before/after, and whether the inputs are unchanged; raises AssertionError on failure."""
    setup = case.setup
    points = evaluation.target_points(case.volume, 1000)
    start = initial_pose(setup, case.volume, geometry_from_xray(setup.xrayVolume))
    estimate = pose_from_transform(setup.outputTransform, setup.transformMeaning or CARM_IN_PATIENT,
                                        setup.inputVolume)
    report = {"mtre_before_mm": float(evaluation.mtre(start, case.truth, points)),
              "mtre_after_mm": float(evaluation.mtre(estimate, case.truth, points))}
    for node in (setup.inputVolume, setup.xrayVolume):
        voxels, matrix, parent = case.inputs[node.GetID()]
        now = _snapshot(node)
        if not (np.array_equal(now[0], voxels) and np.array_equal(now[1], matrix) and now[2] == parent):
            raise AssertionError(f"input node '{node.GetName()}' was modified by the registration")
    report["inputs_unchanged"] = True
    if not report["mtre_after_mm"] < MTRE_LIMIT_MM:
        raise AssertionError(f"self-test registration missed: mTRE {report['mtre_after_mm']:.2f} mm "
                             f"(from {report['mtre_before_mm']:.1f} mm), limit {MTRE_LIMIT_MM} mm")
    return report
