"""Every setting of the DiffReg panel, Qt-free and torch-free.

The Slicer module's parameter node (``DiffRegParameterNode`` in
``DiffReg/DiffReg.py``) has exactly the fields of `Setup`, with the same
names, defaults and choices (a test checks this). The choices of renderer,
similarity, optimiser and intensity convention are the engine's own name
tables (`DiffRegLogic.drr.backends.RENDERERS`,
`DiffRegLogic.similarity.registry.SIMILARITIES`,
`DiffRegLogic.registration.optimizers.OPTIMIZERS`,
`DiffRegLogic.xray.intensity.INTENSITY_CONVENTIONS`), so a measure or
optimiser added to the engine appears in the panel. The similarity choice
adds one entry of the panel's own, `SIMILARITY_LEARNED` ("learned (model
file)"): a learned similarity network read from ``similarityModelPath``
(`DiffRegLogic.learning.similarity_inference`), followed by a polish with
the image similarity ``polishSimilarity`` ("none" or an engine name). This module imports
neither torch nor Slicer (nor do those tables), so the module file can build
its parameter node class from these choices before torch is installed.

`write_parameter_node` / `read_parameter_node` store a `Setup` in a
``vtkMRMLScriptedModuleNode`` the way Slicer's parameter node wrapper does
(parameter name = field name; numbers and text as ``str(value)``, booleans as
``"True"``/``"False"``, nodes as node references whose role is the field
name), so a scene saved from the panel can be read by scripts without the
application.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from dataclasses import dataclass
from typing import Any

from ..drr.backends import RENDERERS as _RENDERERS
from ..errors import InputError
from ..registration.optimizers import OPTIMIZERS as _OPTIMIZERS
from ..registration.options import NUISANCES as _NUISANCES
from ..registration.options import ROBUST_WEIGHTS as _ROBUST_WEIGHTS
from ..registration.options import SEARCHES as _SEARCHES
from ..similarity.registry import SIMILARITIES as _SIMILARITIES
from ..xray.intensity import INTENSITY_CONVENTIONS

CARM_IN_PATIENT = "C-arm in patient"
PATIENT_IN_CARM = "patient in C-arm"
TRANSFORM_MEANINGS = (CARM_IN_PATIENT, PATIENT_IN_CARM)
POSE_FROM_ANGLES = "C-arm angles"
POSE_FROM_TRANSFORM = "transform"
POSE_FROM_NETWORK = "pose network (model file)"
INITIAL_POSE_MODES = (POSE_FROM_ANGLES, POSE_FROM_TRANSFORM, POSE_FROM_NETWORK)
INTENSITIES = tuple(INTENSITY_CONVENTIONS)
OVERLAY_MODES = ("blend", "difference", "checkerboard")
DEVICES = ("auto", "cpu", "cuda")
RENDERERS = tuple(_RENDERERS)
SIMILARITIES = tuple(_SIMILARITIES)
"""The engine's image similarities, by name, in its order."""
SIMILARITY_LEARNED = "learned (model file)"
"""The similarity choice that registers on a learned similarity network (its model file: ``similarityModelPath``)."""
SIMILARITY_CHOICES = SIMILARITIES + (SIMILARITY_LEARNED,)
"""The panel's similarity choices: the engine's names, then the learned similarity."""
POLISH_NONE = "none"
POLISH_SIMILARITIES = (POLISH_NONE,) + SIMILARITIES
"""After the learned similarity: polish at the finest level with this image similarity, or not ("none")."""
OPTIMIZERS = tuple(_OPTIMIZERS)
SEARCHES = tuple(_SEARCHES)
ROBUST_WEIGHTS = tuple(_ROBUST_WEIGHTS)
NUISANCES = tuple(_NUISANCES)
BACKBONES = ("efficientnet-b0", "small")  # `diffreg train --backbone` (DiffRegLogic.cli.train.BACKBONES)
TRAINING_POSE = "pose network"
TRAINING_SIMILARITY = "learned similarity"
TRAINING_KINDS = (TRAINING_POSE, TRAINING_SIMILARITY)
"""What the training section trains: ``diffreg train`` (the pose network) or ``diffreg train --kind similarity``."""
TRAINED_MODEL_FIELDS = {TRAINING_POSE: "poseModelPath", TRAINING_SIMILARITY: "similarityModelPath"}
"""The field a finished training of each kind fills with the model it wrote."""
EMBEDDINGS = ("so4", "se3", "euclidean")  # `diffreg train --embedding` (DiffRegLogic.learning.so4.EMBEDDINGS)

CHOICES = {
    "xrayIntensity": INTENSITIES,
    "initialPoseMode": INITIAL_POSE_MODES,
    "renderer": RENDERERS,
    "similarity": SIMILARITY_CHOICES,
    "polishSimilarity": POLISH_SIMILARITIES,
    "optimizer": OPTIMIZERS,
    "search": SEARCHES,
    "robust": ROBUST_WEIGHTS,
    "nuisance": NUISANCES,
    "device": DEVICES,
    "trainingKind": TRAINING_KINDS,
    "trainingBackbone": BACKBONES,
    "trainingEmbedding": EMBEDDINGS,
    "trainingDevice": DEVICES,
    "transformMeaning": TRANSFORM_MEANINGS,
    "overlayMode": OVERLAY_MODES,
}
NODE_FIELDS = ("inputVolume", "xrayVolume", "secondXrayVolume", "initialTransform", "outputTransform", "outputDrr")
PATH_FIELDS = ("poseModelPath", "similarityModelPath", "trainingModelPath")
"""Fields holding a file path (`pathlib.Path`; ``Path()``, shown as ".", means "not set")."""


def path_is_set(path) -> bool:
    """Whether a path field holds a file name (not ``Path()`` / "" / ".")."""
    return str(path).strip() not in ("", ".")


@dataclass
class Setup:
    """Every setting of the DiffReg panel, one field per parameter-node field.

    Node fields hold MRML nodes or ``None``. Zero means "not set" for the
    geometry numbers: the X-ray node (spacing) or its DICOM file fills them
    in (`DiffRegLogic.mrml.carm.geometry_from_xray`). Units: mm and degrees.
    """

    # inputs
    inputVolume: Any = None  # CT, vtkMRMLScalarVolumeNode in HU
    xrayVolume: Any = None  # single-slice vtkMRMLScalarVolumeNode
    xrayIntensity: str = "auto"  # auto (DICOM tags, else detected) | line_integral | inverted | intensity | ...
    secondXrayVolume: Any = None  # optional second view (biplane or a second C-arm shot), same CT pose
    # geometry
    sdd: float = 0.0  # source-to-detector distance, mm
    pixelSpacingRow: float = 0.0  # mm
    pixelSpacingColumn: float = 0.0  # mm
    principalPointAtCenter: bool = True
    principalPointColumn: float = 0.0  # pixels
    principalPointRow: float = 0.0  # pixels
    # initial pose
    initialPoseMode: str = POSE_FROM_ANGLES
    initialTransform: Any = None  # vtkMRMLLinearTransformNode, read with transformMeaning
    primaryAngle: float = 0.0  # deg, LAO + / RAO -
    secondaryAngle: float = 0.0  # deg, CRA + / CAU -
    sourceToIsocenter: float = 0.0  # mm; the isocentre is the CT centre
    poseModelPath: pathlib.Path = pathlib.Path()  # POSE_FROM_NETWORK: the .pt model `diffreg train` wrote
    # the second view's C-arm angles (deg); with the first view's they fix the relation between the views.
    # secondAnglesFromXray: take them from the second X-ray's DICOM tags
    secondAnglesFromXray: bool = True
    secondPrimaryAngle: float = 90.0  # deg, LAO + / RAO -
    secondSecondaryAngle: float = 0.0  # deg, CRA + / CAU -
    # options
    renderer: str = "siddon"
    similarity: str = "zncc"  # an engine name, or SIMILARITY_LEARNED
    similarityModelPath: pathlib.Path = pathlib.Path()  # SIMILARITY_LEARNED: the .pt `train --kind similarity` wrote
    polishSimilarity: str = "zncc"  # SIMILARITY_LEARNED: then polish at the finest level with this ("none": no polish)
    optimizer: str = "adam"
    levels: str = "8 4 2 1"  # downsampling factors, coarse to fine
    iterations: int = 150  # per level
    starts: int = 1  # random starts (multi-start)
    device: str = "auto"
    maxMemoryMb: float = 2048.0  # renderer working memory; lower = smaller tiles
    # X-ray physics of the model (polychromatic: materials and a tube spectrum, traced with `renderer`)
    polychromatic: bool = False
    tubeVoltage: float = 80.0  # kVp
    filtrationMmAl: float = 0.0  # aluminium added to the tube's 2.5 mm, mm
    # global search and robustness (`DiffRegLogic.registration.options`)
    search: str = "local"  # local | wide
    searchRotation: float = 45.0  # deg, +- about each axis
    searchTranslation: float = 60.0  # mm, +- along each axis
    robust: str = "none"  # none | tukey
    footprintMask: bool = False
    nuisance: str = "none"  # none | scatter
    # training a network in a background process (`DiffRegLogic.mrml.training`, `diffreg train`)
    trainingKind: str = TRAINING_POSE  # pose network | learned similarity (`diffreg train --kind similarity`)
    trainingMinutes: float = 10.0  # time budget, minutes
    trainingImageSize: int = 128  # network input side, pixels (a multiple of 32)
    trainingMaxRotation: float = 30.0  # deg, +- about each axis around the reference view
    trainingMaxTranslation: float = 40.0  # mm, +- along each axis
    trainingBackbone: str = "efficientnet-b0"  # pose network: efficientnet-b0 (the poster's) | small (fast on CPU)
    trainingEmbedding: str = "so4"  # learned similarity: so4 (the paper's) | se3 | euclidean
    trainingDevice: str = "auto"
    trainingModelPath: pathlib.Path = pathlib.Path()  # where the model (.pt) is saved
    # outputs
    transformMeaning: str = CARM_IN_PATIENT
    outputTransform: Any = None  # vtkMRMLLinearTransformNode
    outputDrr: Any = None  # vtkMRMLScalarVolumeNode
    overlayMode: str = "blend"
    overlayOpacity: float = 0.5

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_object(cls, obj) -> "Setup":
        """A Setup from anything with these attributes (the Slicer parameter node wrapper)."""
        return cls(**{name: getattr(obj, name) for name in cls.field_names()})

    def level_factors(self) -> tuple[float, ...]:
        """The levels as downsampling factors; raises InputError when they are not numbers >= 1."""
        try:
            factors = tuple(float(x) for x in str(self.levels).replace(",", " ").split())
        except ValueError:
            factors = ()
        if not factors or any(not (1 <= f < math.inf) for f in factors):
            raise InputError(
                f"levels {self.levels!r}: give downsampling factors >= 1, coarse to fine, separated by spaces "
                "(e.g. '8 4 2 1') under Options > Levels (levels)"
            )
        return factors

    def check_choices(self) -> None:
        """Raise InputError for a choice field holding an unknown value."""
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise InputError(f"{name} is {getattr(self, name)!r}; choose one of {', '.join(choices)}")


def learned_model_path(setup: Setup) -> pathlib.Path | None:
    """The learned similarity's model file when the similarity is `SIMILARITY_LEARNED`, else None (InputError if bad).

    Checked before any node is read: the model file is chosen and exists,
    and there is one X-ray (the learned similarity registers a single
    view). Whether the model fits this CT and detector is the model file's
    own check when it is loaded (`DiffRegLogic.learning.similarity_inference.load_similarity`).
    """
    if setup.similarity != SIMILARITY_LEARNED:
        return None
    label = "Options > Similarity model file (similarityModelPath)"
    path = setup.similarityModelPath
    if not path_is_set(path):
        raise InputError(f"the similarity is {SIMILARITY_LEARNED!r} but no model file is chosen: choose the .pt file "
                         f"of a trained similarity under {label} (train one under 'Train pose network' with Network "
                         f"'{TRAINING_SIMILARITY}', or with `diffreg train --kind similarity`), or pick an image "
                         "similarity")
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{label}: {path} is a folder; choose the learned similarity's .pt model file")
    if not path.is_file():
        raise InputError(f"the learned similarity's model file {path} does not exist; choose the .pt file the "
                         f"similarity training saved under {label}")
    if setup.secondXrayVolume is not None:
        raise InputError(f"the similarity {SIMILARITY_LEARNED!r} registers one X-ray: clear Inputs > Second X-ray "
                         "(secondXrayVolume), or pick an image similarity to register both views")
    return path


def write_parameter_node(parameter_node, setup: Setup) -> None:
    """Store ``setup`` in a vtkMRMLScriptedModuleNode as the parameter node wrapper does."""
    for f in dataclasses.fields(Setup):
        value = getattr(setup, f.name)
        if f.name in NODE_FIELDS:
            parameter_node.SetParameter(f.name, "")
            parameter_node.SetNodeReferenceID(f.name, value.GetID() if value is not None else None)
        else:
            parameter_node.SetParameter(f.name, str(value))


def read_parameter_node(parameter_node) -> Setup:
    """The `Setup` stored in a parameter node (missing parameters keep their defaults)."""
    values: dict = {}
    for f in dataclasses.fields(Setup):
        if f.name in NODE_FIELDS:
            values[f.name] = parameter_node.GetNodeReference(f.name)
            continue
        text = parameter_node.GetParameter(f.name)
        if not text:
            continue
        default = f.default
        try:
            if isinstance(default, pathlib.PurePath):
                values[f.name] = type(default)(text)
            elif isinstance(default, bool):
                values[f.name] = text == "True"
            elif isinstance(default, int):
                values[f.name] = int(text)
            elif isinstance(default, float):
                values[f.name] = float(text)
            else:
                values[f.name] = text
        except ValueError as exc:
            raise InputError(f"parameter {f.name} holds {text!r}, not a number") from exc
    return Setup(**values)
