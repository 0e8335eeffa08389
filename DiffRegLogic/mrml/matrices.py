"""4x4 matrices between VTK and numpy, and the placement of MRML nodes in world RAS (parent transforms).

VTK is imported where it is used (Slicer's, or the ``slicer-core`` wheel's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError


def _vtk():
    import vtk  # provided by Slicer, or by the slicer-core wheel's vtk

    return vtk


def array_from_vtk_matrix(matrix) -> np.ndarray:
    """vtkMatrix4x4 -> (4, 4) float64."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def vtk_matrix_from_array(array) -> Any:
    """(4, 4) -> vtkMatrix4x4."""
    array = np.asarray(array, dtype=np.float64)
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def parent_to_world(node) -> np.ndarray:
    """(4, 4) matrix of the node's parent transforms (identity when it has none).

    Raises InputError for a non-linear (warping) parent transform.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; DiffReg needs a rigid "
            "placement: harden that transform into a copy of the volume (Data module) or remove it"
        )
    return _to_world(parent)


def _to_world(transform_node) -> np.ndarray:
    """(4, 4) matrix to world of a linear transform node (its own parents included)."""
    matrix = _vtk().vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return array_from_vtk_matrix(matrix)


def ijk_to_ras(node) -> np.ndarray:
    """(4, 4) IJK->RAS of a volume node, without its parent transforms."""
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return array_from_vtk_matrix(matrix)


def set_ijk_to_ras(node, matrix) -> None:
    node.SetIJKToRASMatrix(vtk_matrix_from_array(matrix))


def transform_matrix(node) -> np.ndarray:
    """Matrix to parent (4, 4) of a linear transform node."""
    matrix = _vtk().vtkMatrix4x4()
    node.GetMatrixTransformToParent(matrix)
    return array_from_vtk_matrix(matrix)


def set_transform_matrix(node, matrix) -> None:
    node.SetMatrixTransformToParent(vtk_matrix_from_array(matrix))
