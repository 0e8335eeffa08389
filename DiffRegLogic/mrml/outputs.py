"""The output nodes of a setup: transform, DRR, X-ray copy, C-arm model, overlay, loss table and chart.

All are created on demand (named after the X-ray), never the inputs, and
linked by node references so that later runs reuse them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError
from ..geometry.detector import Detector
from .carm import carm_polydata, detector_plane_matrix
from .checks import check_outputs
from .matrices import _vtk, ijk_to_ras, set_ijk_to_ras, set_transform_matrix, transform_matrix
from .nodes import _write_volume
from .poses import transform_from_pose
from .settings import CARM_IN_PATIENT, Setup

# Node reference roles this module sets on its output nodes.
ROLE_MOVING, ROLE_FIXED = "movingVolume", "fixedVolume"  # on the output transform, as registration modules do
ROLE_DRR, ROLE_XRAY_COPY, ROLE_MODEL, ROLE_OVERLAY = "diffregDrr", "diffregXray", "diffregCarm", "diffregOverlay"
ROLE_TABLE, ROLE_CHART = "diffregTable", "diffregChart"
CARM_COLOR = (1.0, 0.8, 0.2)  # source, detector outline and edge rays in 3D
DERIVED_ROLES = (ROLE_XRAY_COPY, ROLE_MODEL, ROLE_OVERLAY, ROLE_TABLE, ROLE_CHART)
"""The references of the output DRR to the other nodes DiffReg writes."""


def _new_node(scene, class_name: str, name: str):
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    if hasattr(node, "CreateDefaultDisplayNodes"):
        node.CreateDefaultDisplayNodes()
    return node


def _referenced(owner, role: str, scene, class_name: str, name: str):
    """The node ``owner`` references under ``role``, created (and referenced) when missing or of another kind."""
    node = owner.GetNodeReference(role)
    if node is None or node.GetScene() is not scene or not node.IsA(class_name):
        node = _new_node(scene, class_name, name)
        owner.SetNodeReferenceID(role, node.GetID())
    return node


@dataclass
class Outputs:
    """The output nodes of one setup (all created on demand, never the inputs)."""

    transform: Any
    drr: Any
    xray_copy: Any
    model: Any
    overlay: Any


def ensure_outputs(scene, setup: Setup) -> Outputs:
    """Create the missing output nodes (named after the X-ray) and link them; returns them.

    ``setup.outputTransform`` and ``setup.outputDrr`` are set when they were
    empty. The X-ray copy, the C-arm model and the overlay volume are
    referenced from the DRR node so that later runs reuse them. Outputs
    that are inputs (or would move one) are refused first
    (`DiffRegLogic.mrml.checks.check_outputs`), before any node is created.
    """
    check_outputs(setup, DERIVED_ROLES)
    base = setup.xrayVolume.GetName() if setup.xrayVolume is not None else "X-ray"
    if setup.outputTransform is None:
        setup.outputTransform = _new_node(scene, "vtkMRMLLinearTransformNode", f"{base} C-arm pose")
    if setup.outputDrr is None:
        setup.outputDrr = _new_node(scene, "vtkMRMLScalarVolumeNode", f"{base} DRR")
    drr = setup.outputDrr
    if drr.GetDisplayNode() is None:
        drr.CreateDefaultDisplayNodes()
    xray_copy = _referenced(drr, ROLE_XRAY_COPY, scene, "vtkMRMLScalarVolumeNode", f"{base} on detector")
    model = _referenced(drr, ROLE_MODEL, scene, "vtkMRMLModelNode", f"{base} C-arm")
    display = model.GetDisplayNode()
    if display is not None:
        display.SetColor(*CARM_COLOR)
        display.SetLineWidth(2.0)
    overlay = _referenced(drr, ROLE_OVERLAY, scene, "vtkMRMLScalarVolumeNode", f"{base} overlay")
    transform = setup.outputTransform
    if setup.inputVolume is not None:
        transform.SetNodeReferenceID(ROLE_MOVING, setup.inputVolume.GetID())
    if setup.xrayVolume is not None:
        transform.SetNodeReferenceID(ROLE_FIXED, setup.xrayVolume.GetID())
    return Outputs(transform, drr, xray_copy, model, overlay)


def _state(node) -> Callable[[], None] | None:
    """A function that gives ``node`` back the content and placement DiffReg may write (None: nothing to keep)."""
    if node is None:
        return None
    parent = node.GetTransformNodeID() if hasattr(node, "GetTransformNodeID") else None
    if node.IsA("vtkMRMLLinearTransformNode"):
        matrix = transform_matrix(node)
        refs = {role: node.GetNodeReferenceID(role) for role in (ROLE_MOVING, ROLE_FIXED)}

        def restore() -> None:
            set_transform_matrix(node, matrix)
            for role, ref in refs.items():
                node.SetNodeReferenceID(role, ref)
    elif node.IsA("vtkMRMLVolumeNode"):
        image, ijk = node.GetImageData(), ijk_to_ras(node)
        refs = {role: node.GetNodeReferenceID(role) for role in DERIVED_ROLES}

        def restore() -> None:
            node.SetAndObserveImageData(image)
            set_ijk_to_ras(node, ijk)
            for role, ref in refs.items():
                node.SetNodeReferenceID(role, ref)
    elif node.IsA("vtkMRMLModelNode"):
        poly = node.GetPolyData()

        def restore() -> None:
            node.SetAndObservePolyData(poly)
    elif node.IsA("vtkMRMLTableNode"):
        table = node.GetTable()

        def restore() -> None:
            node.SetAndObserveTable(table)
    else:
        return None

    def restore_placement() -> None:
        restore()
        if hasattr(node, "SetAndObserveTransformNodeID"):
            node.SetAndObserveTransformNodeID(parent)

    return restore_placement


@contextmanager
def restore_on_failure(scene, setup: Setup) -> Iterator[None]:
    """Undo what the block did to the outputs when it raises: the scene and the outputs are as before.

    Existing output nodes (the setup's transform and DRR, and the nodes the
    DRR references) get their matrix, voxels, geometry, model, table and
    parent transform back; nodes the block added to the scene are removed;
    ``setup.outputTransform`` / ``setup.outputDrr`` get their earlier
    values. The exception is raised on.
    """
    fields = (setup.outputTransform, setup.outputDrr)
    nodes = list(fields)
    if setup.outputDrr is not None:
        nodes += [setup.outputDrr.GetNodeReference(role) for role in DERIVED_ROLES]
    states = [state for state in map(_state, nodes) if state is not None]
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    except BaseException:
        for restore in states:
            restore()
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            if scene.GetNodeByID(node.GetID()) is not None:
                scene.RemoveNode(node)
        setup.outputTransform, setup.outputDrr = fields
        raise


def place_outputs(outputs: Outputs, meaning: str) -> None:
    """Parent the detector-plane nodes to the output transform (C-arm in patient) or to nothing."""
    parent_id = outputs.transform.GetID() if meaning == CARM_IN_PATIENT else None
    for node in (outputs.drr, outputs.xray_copy, outputs.model, outputs.overlay):
        node.SetAndObserveTransformNodeID(parent_id)


def write_pose(outputs: Outputs, pose, meaning: str, ct_node, ct_parent: np.ndarray | None = None) -> None:
    """Write camera_from_world ``pose`` into the output transform (``ct_parent``: see `transform_from_pose`)."""
    set_transform_matrix(outputs.transform, transform_from_pose(pose, meaning, ct_node, ct_parent))


def write_detector_images(outputs: Outputs, detector: Detector, drr: np.ndarray | None = None,
                          xray: np.ndarray | None = None) -> None:
    """The DRR and/or X-ray copy as detector-plane volumes, and the C-arm outline model."""
    plane = detector_plane_matrix(detector)
    if drr is not None:
        _write_volume(outputs.drr, drr, plane)
    if xray is not None:
        _write_volume(outputs.xray_copy, xray, plane)
    outputs.model.SetAndObservePolyData(carm_polydata(detector))


def existing_outputs(setup: Setup) -> Outputs:
    """The outputs of an earlier Render/Register of this setup; InputError when there are none yet."""
    drr, transform = setup.outputDrr, setup.outputTransform
    parts = None if drr is None or transform is None else [drr.GetNodeReference(r) for r in
                                                            (ROLE_XRAY_COPY, ROLE_MODEL, ROLE_OVERLAY)]
    if parts is None or any(p is None for p in parts):
        raise InputError("there is no DRR yet: press Render DRR or Register first")
    return Outputs(transform, drr, *parts)


def loss_chart(setup: Setup):
    """The loss-curve chart of the last registration into these outputs, or None."""
    return setup.outputDrr.GetNodeReference(ROLE_CHART) if setup.outputDrr is not None else None


def write_loss_curve(scene, outputs: Outputs, trace: list[dict], similarity: str):
    """Table (iteration, level, best similarity) + plot chart of the registration; returns the chart node."""
    table = _referenced(outputs.drr, ROLE_TABLE, scene, "vtkMRMLTableNode", f"{outputs.drr.GetName()} loss")
    chart = _referenced(outputs.drr, ROLE_CHART, scene, "vtkMRMLPlotChartNode", f"{outputs.drr.GetName()} loss chart")
    vtk = _vtk()
    data = vtk.vtkTable()
    columns = {}
    for name in ("iteration", "level", similarity):
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        data.AddColumn(column)
        columns[name] = column
    for n, entry in enumerate(trace):
        best = entry["best_similarity"]
        value = max(best) if isinstance(best, list) else float(best)
        columns["iteration"].InsertNextValue(n)
        columns["level"].InsertNextValue(entry["level"] + 1)
        columns[similarity].InsertNextValue(value)
    table.SetAndObserveTable(data)
    series = chart.GetNthPlotSeriesNode(0) if chart.GetNumberOfPlotSeriesNodes() else None
    if series is None:
        series = _new_node(scene, "vtkMRMLPlotSeriesNode", f"best {similarity}")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("iteration")
    series.SetYColumnName(similarity)
    series.SetPlotType(series.PlotTypeScatter)
    chart.SetTitle("DiffReg: best similarity so far")
    chart.SetXAxisTitle("iteration (all levels)")
    chart.SetYAxisTitle(similarity)
    return chart
