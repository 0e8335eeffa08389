"""Checks of the panel's nodes and numbers, before any voxel is copied and before any output is touched.

Every check raises `InputError` with a message the panel shows as it is:
what is wrong (naming the node or the panel field) and what to do. The
ranges are `DiffRegLogic.limits`; nothing here reads a voxel except
`check_finite`, and the size checks read only the image dimensions, so a
node claiming 100000 x 100000 pixels is refused before its scalars are
looked at. Torch-free.
"""

from __future__ import annotations

import numpy as np

from .. import limits
from ..errors import InputError
from ..limits import check_number
from .settings import CARM_IN_PATIENT, POSE_FROM_TRANSFORM, Setup

MAX_ANGLE_DEG = 360.0
"""|C-arm angle| the panel accepts, degrees (this module's own limit: angles beyond a turn are typing errors)."""
MIN_KVP, MAX_KVP = 60.0, 120.0
"""Tube voltages of the shipped spectra (kVp)."""
MAX_FILTRATION_MM_AL = 20.0
"""Largest added aluminium filtration the panel takes (mm)."""
MAX_DIRECTION_CONDITION = 1e6
"""Largest condition number of a volume's unit IJK->RAS directions (this module's own limit; parallel axes above)."""

_VOLUMES_HINT = "fix it in the Volumes module (Volume Information) or reload the volume from its file"


def is_node(node, class_name: str) -> bool:
    """Whether ``node`` is an MRML node of ``class_name`` (or a subclass); False for anything else."""
    is_a = getattr(node, "IsA", None)
    return callable(is_a) and bool(is_a(class_name))


def node_name(node) -> str:
    get = getattr(node, "GetName", None)
    return str(get()) if callable(get) else str(node)


def _same(a, b) -> bool:
    if a is None or b is None:
        return False
    if a is b:
        return True
    id_a, id_b = getattr(a, "GetID", lambda: None)(), getattr(b, "GetID", lambda: None)()
    return id_a is not None and id_a == id_b and a.GetScene() is b.GetScene()


# ---------------------------------------------------------------- image sizes (dimensions only, no scalars)


def image_dimensions(node) -> tuple[int, int, int]:
    """(I, J, K) = (columns, rows, slices) of a volume node's image data; InputError when it has none or is empty.

    Reads only the dimensions, never the scalars.
    """
    image = node.GetImageData()
    if image is None:
        raise InputError(f"'{node_name(node)}' has no voxels (empty volume node); load or select a volume with data")
    i, j, k = (int(d) for d in image.GetDimensions())
    if min(i, j, k) <= 0:
        raise InputError(
            f"'{node_name(node)}' is empty (dimensions {i} x {j} x {k}); load or select a volume with data")
    return i, j, k


def check_ct_size(node, dims: tuple[int, int, int]) -> None:
    """A CT has at least 2 voxels along each axis and at most `limits.MAX_VOLUME_VOXELS`."""
    i, j, k = dims
    if min(dims) < 2:
        raise InputError(
            f"'{node_name(node)}' has shape {i} x {j} x {k} voxels: a single slice is an image, not a CT; pick the "
            "3D CT volume (and the 2D image as the X-ray)"
        )
    if i * j * k > limits.MAX_VOLUME_VOXELS:
        raise InputError(
            f"'{node_name(node)}' has {i} x {j} x {k} = {i * j * k:.3g} voxels, more than DiffReg takes "
            f"({limits.MAX_VOLUME_VOXELS:.3g}); crop or resample it (Crop Volume module) first"
        )


def check_xray_size(node, dims: tuple[int, int, int]) -> None:
    """An X-ray is one slice of 2..`limits.MAX_DETECTOR_SIDE` pixels per side, `limits.MAX_DETECTOR_PIXELS` at most."""
    cols, rows, slices = dims
    name = node_name(node)
    if slices != 1:
        raise InputError(
            f"'{name}' has {slices} slices; an X-ray is a single-slice volume (cols x rows x 1). "
            "Pick the 2D X-ray (a multi-frame cine loads as a sequence: pick one frame)"
        )
    if min(rows, cols) < 2:
        raise InputError(f"'{name}' is {cols} x {rows} pixels; an X-ray needs at least 2 x 2")
    side, pixels = limits.MAX_DETECTOR_SIDE, limits.MAX_DETECTOR_PIXELS
    if max(rows, cols) > side or rows * cols > pixels:
        raise InputError(
            f"'{name}' is {cols} x {rows} pixels (columns x rows); an X-ray may have at most {side} pixels per side "
            f"and {pixels} in all: downsample or crop it (Crop Volume / Resample Scalar Volume modules) first"
        )


def check_finite(node, array: np.ndarray, what: str) -> None:
    """InputError naming the node when ``array`` (its voxels) holds NaN or infinite values."""
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(
            f"{what} '{node_name(node)}' has {bad} NaN or infinite voxel(s); fill them (e.g. Simple Filters, or "
            "threshold them to a number in the Threshold Scalar Volume module) and pick the result"
        )


# ---------------------------------------------------------------- placement (spacing, directions, parents)


def _check_spacing(node, what: str, low_high: tuple[float, float], axes: str) -> None:
    names = {"I": "I (columns)", "J": "J (rows)", "K": "K (slices)"}
    for axis, value in zip(axes, node.GetSpacing()):
        try:
            check_number(f"the spacing of {what} '{node_name(node)}' along {names[axis]}", value, *low_high, unit="mm")
        except InputError as error:
            raise InputError(f"{error}; {_VOLUMES_HINT}") from None


def _check_matrix(matrix: np.ndarray, what: str, hint: str) -> None:
    """A finite affine 4x4 (last row 0 0 0 1) whose 3x3 block has non-zero, non-parallel columns."""
    if not np.isfinite(matrix).all():
        raise InputError(f"{what} has NaN or infinite entries; {hint}")
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9):
        raise InputError(f"{what} is not affine (its last row is {matrix[3].tolist()}, not 0 0 0 1); {hint}")
    block = matrix[:3, :3]
    norms = np.linalg.norm(block, axis=0)
    if not (norms > 0).all() or np.linalg.cond(block / norms) > MAX_DIRECTION_CONDITION:
        raise InputError(f"{what} is singular (a voxel axis is zero or parallel to another); {hint}")


def check_ct_placement(node, ijk_to_ras: np.ndarray, parent_to_world: np.ndarray) -> np.ndarray:
    """The CT's IJK -> world (4, 4) after checking its spacing, directions, origin and parent transforms."""
    name = node_name(node)
    _check_spacing(node, "CT", limits.VOXEL_SPACING_RANGE_MM, "IJK")
    _check_matrix(ijk_to_ras, f"the IJK-to-RAS matrix (origin and directions) of CT '{name}'", _VOLUMES_HINT)
    parent = node.GetParentTransformNode()
    if parent is not None:
        _check_matrix(parent_to_world, f"the transform '{node_name(parent)}' above CT '{name}'",
                      "fix its matrix in the Transforms module, or remove the CT from it")
    affine = parent_to_world @ ijk_to_ras
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = limits.VOXEL_SPACING_RANGE_MM
    if not ((spacing >= low) & (spacing <= high)).all():
        raise InputError(
            f"CT '{name}' under its parent transforms has voxel spacing {np.round(spacing, 6).tolist()} mm, outside "
            f"[{low:g}, {high:g}] mm: its transform scales it; harden or remove that transform (Transforms module)"
        )
    offset = float(np.abs(affine[:3, 3]).max())
    if offset > limits.MAX_TRANSLATION_MM:
        raise InputError(
            f"CT '{name}' lies {offset:.3g} mm from the world origin (more than {limits.MAX_TRANSLATION_MM:g} mm); "
            "fix its origin (Volumes module) or its parent transform"
        )
    return affine


def check_xray_placement(node, ijk_to_ras: np.ndarray) -> None:
    """The X-ray node's pixel spacing (columns, rows) and IJK-to-RAS matrix."""
    _check_spacing(node, "X-ray", limits.PIXEL_SPACING_RANGE_MM, "IJ")
    _check_matrix(ijk_to_ras, f"the IJK-to-RAS matrix (origin and directions) of X-ray '{node_name(node)}'",
                  _VOLUMES_HINT)


# ---------------------------------------------------------------- the panel's numbers

_LABELS = {
    "sdd": ("Geometry", "Source-detector distance", "mm"),
    "pixelSpacingRow": ("Geometry", "Pixel spacing (row)", "mm"),
    "pixelSpacingColumn": ("Geometry", "Pixel spacing (column)", "mm"),
    "principalPointColumn": ("Geometry", "Principal point (column)", "px"),
    "principalPointRow": ("Geometry", "Principal point (row)", "px"),
    "primaryAngle": ("Initial pose", "Primary angle (LAO+/RAO-)", "deg"),
    "secondaryAngle": ("Initial pose", "Secondary angle (CRA+/CAU-)", "deg"),
    "sourceToIsocenter": ("Initial pose", "Source-isocentre distance", "mm"),
    "iterations": ("Options", "Iterations per level", ""),
    "starts": ("Options", "Random starts", ""),
    "maxMemoryMb": ("Options", "Memory budget", "MB"),
    "secondPrimaryAngle": ("Initial pose", "Second view primary angle", "deg"),
    "secondSecondaryAngle": ("Initial pose", "Second view secondary angle", "deg"),
    "tubeVoltage": ("Options", "Tube voltage", "kVp"),
    "filtrationMmAl": ("Options", "Added filtration", "mm"),
    "searchRotation": ("Options", "Search rotation range", "deg"),
    "searchTranslation": ("Options", "Search translation range", "mm"),
    "overlayOpacity": ("Results", "DRR opacity", ""),
}


def field_label(name: str) -> str:
    """How the panel names a setting: ``Geometry > Source-detector distance (sdd)``."""
    section, label, _ = _LABELS[name]
    return f"{section} > {label} ({name})"


def panel_number(setup: Setup, name: str, low: float | None, high: float | None, *, unset_zero: bool = False,
                 integer: bool = False, hint: str = "") -> float | int | None:
    """The setup's field ``name`` checked against [low, high]; None when ``unset_zero`` and it is 0 (not set)."""
    value = getattr(setup, name)
    if unset_zero and not isinstance(value, (bool, str)) and value == 0:
        return None
    try:
        return check_number(field_label(name), value, low, high, integer=integer, unit=_LABELS[name][2])
    except InputError as error:
        raise InputError(f"{error}{'; ' + hint if hint else ''}") from None


_ZERO_FROM_XRAY = "enter it, or 0 to take it from the X-ray"


def check_geometry_fields(setup: Setup) -> None:
    """The Geometry section: source-detector distance, pixel spacing, principal point (0 = from the X-ray)."""
    panel_number(setup, "sdd", *limits.SDD_RANGE_MM, unset_zero=True, hint=_ZERO_FROM_XRAY + "'s DICOM tags")
    for name in ("pixelSpacingRow", "pixelSpacingColumn"):
        panel_number(setup, name, *limits.PIXEL_SPACING_RANGE_MM, unset_zero=True, hint=_ZERO_FROM_XRAY)
    if not setup.principalPointAtCenter:
        for name in ("principalPointColumn", "principalPointRow"):
            panel_number(setup, name, -limits.MAX_PRINCIPAL_POINT_PX, limits.MAX_PRINCIPAL_POINT_PX,
                         hint="or tick 'Principal point at centre'")


def check_pose_fields(setup: Setup) -> None:
    """The Initial pose section when it starts from C-arm angles (the distance: 0 = from the X-ray)."""
    if setup.initialPoseMode == POSE_FROM_TRANSFORM:
        return
    for name in ("primaryAngle", "secondaryAngle"):
        panel_number(setup, name, -MAX_ANGLE_DEG, MAX_ANGLE_DEG)
    panel_number(setup, "sourceToIsocenter", *limits.SDD_RANGE_MM, unset_zero=True,
                 hint=_ZERO_FROM_XRAY + "'s DICOM tags")


def check_option_fields(setup: Setup) -> None:
    """The Options section's numbers (levels are checked by `Setup.level_factors`)."""
    panel_number(setup, "iterations", 1, limits.MAX_ITERATIONS, integer=True)
    panel_number(setup, "starts", 1, limits.MAX_STARTS, integer=True)
    panel_number(setup, "maxMemoryMb", *limits.MEMORY_MB_RANGE)
    setup.level_factors()
    if setup.polychromatic:
        kvp = panel_number(setup, "tubeVoltage", MIN_KVP, MAX_KVP, hint="the shipped tube spectra are 60, 70, ..., "
                           "120 kVp")
        if kvp % 10:
            raise InputError(f"{field_label('tubeVoltage')} is {kvp:g} kVp; DiffReg ships tube spectra for 60, 70, "
                             "..., 120 kVp: pick the nearest")
        panel_number(setup, "filtrationMmAl", 0.0, MAX_FILTRATION_MM_AL)
    if setup.search != "local":
        panel_number(setup, "searchRotation", 0.0, 180.0)
        panel_number(setup, "searchTranslation", 0.0, limits.MAX_TRANSLATION_MM)
    if setup.secondXrayVolume is not None and not setup.secondAnglesFromXray:
        for name in ("secondPrimaryAngle", "secondSecondaryAngle"):
            panel_number(setup, name, -MAX_ANGLE_DEG, MAX_ANGLE_DEG)


def check_xray_value(what: str, value, low: float, high: float, unit: str, field: str) -> float:
    """A geometry number the X-ray node or its DICOM file states, checked; the message names the field that overrides it."""
    try:
        return float(check_number(what, value, low, high, unit=unit))
    except InputError as error:
        raise InputError(f"{error}; enter the right value under {field_label(field)}") from None


# ---------------------------------------------------------------- outputs versus inputs


def _ancestors(node) -> list:
    found, parent = [], node.GetParentTransformNode() if node is not None else None
    while parent is not None and len(found) < 1000:
        found.append(parent)
        parent = parent.GetParentTransformNode()
    return found


_OUTPUT_LABELS = {"outputTransform": "output transform (Results > Output transform)",
                  "outputDrr": "output DRR (Results > Output DRR)"}


def check_outputs(setup: Setup, derived_roles: tuple[str, ...] = ()) -> None:
    """Refuse output nodes that are inputs, would move an input, or are of the wrong kind; before any work.

    Inputs: the CT, the X-ray and (when the start is read from it) the
    initial transform. The output transform may not be one of them, nor a
    parent of the initial transform, nor (for "C-arm in patient", where the
    CT is meant to stay put) a parent of the CT. The output DRR and the nodes
    it references under ``derived_roles`` (X-ray copy, model, overlay, loss
    table and chart) may not be inputs.
    """
    inputs = [(setup.inputVolume, "the input CT"), (setup.xrayVolume, "the input X-ray")]
    if setup.secondXrayVolume is not None and _same(setup.secondXrayVolume, setup.xrayVolume):
        raise InputError(f"the second X-ray '{node_name(setup.secondXrayVolume)}' is the input X-ray itself; pick the "
                         "other view's X-ray under Inputs > Second X-ray, or none")
    if setup.secondXrayVolume is not None:
        inputs.append((setup.secondXrayVolume, "the second X-ray"))
    from_transform = setup.initialPoseMode == POSE_FROM_TRANSFORM
    if from_transform:
        inputs.append((setup.initialTransform, "the initial transform"))

    def input_role(node) -> str | None:
        return next((role for other, role in inputs if _same(node, other)), None)

    for field, class_name, kind in (("outputTransform", "vtkMRMLLinearTransformNode", "a linear transform"),
                                    ("outputDrr", "vtkMRMLScalarVolumeNode", "a scalar volume")):
        node, label = getattr(setup, field), _OUTPUT_LABELS[field]
        if node is None:
            continue
        if not is_node(node, class_name):
            raise InputError(f"the {label} {node_name(node)!r} is not {kind}; pick one or 'Create new'")
        role = input_role(node)
        if role is not None:
            raise InputError(f"the {label} '{node_name(node)}' is also an input ({role}): DiffReg never writes "
                             "into its inputs; pick another node or 'Create new' as the output")
    transform, drr = setup.outputTransform, setup.outputDrr
    if transform is not None:
        guarded = [(setup.initialTransform, "the initial transform")] if from_transform else []
        if setup.transformMeaning == CARM_IN_PATIENT:
            guarded.append((setup.inputVolume, "the input CT"))
        for node, role in guarded:
            if any(_same(transform, parent) for parent in _ancestors(node)):
                raise InputError(
                    f"the {_OUTPUT_LABELS['outputTransform']} '{node_name(transform)}' is a parent transform of "
                    f"{role} '{node_name(node)}': writing it would move that input; pick another output transform "
                    "or 'Create new', or take the input out of that transform (Data module)"
                )
    if drr is not None:
        for reference in derived_roles:
            node = drr.GetNodeReference(reference)
            role = input_role(node)
            if role is not None:
                raise InputError(
                    f"the {_OUTPUT_LABELS['outputDrr']} '{node_name(drr)}' writes its '{reference}' output into "
                    f"'{node_name(node)}', which is {role}; pick another output DRR or 'Create new'"
                )


def check_setup(setup: Setup, derived_roles: tuple[str, ...] = ()) -> None:
    """Every cheap check of a setup, before any node is read: choices, numbers, outputs."""
    setup.check_choices()
    check_geometry_fields(setup)
    check_pose_fields(setup)
    check_option_fields(setup)
    check_outputs(setup, derived_roles)
