"""Training a network from the panel: the inputs as files, the command line, the background process.

The Slicer panel's "Train pose network" section runs ``diffreg train`` as a
background process (``python -u -m DiffRegLogic.cli train ... --progress
json``) so the GUI never waits for it. Its ``trainingKind`` picks the
network: the pose network (``diffreg train``) or the learned similarity
(``diffreg train --kind similarity --embedding so4|se3|euclidean``); both
write a ``.pt`` model and report the same JSON progress lines. This module is the engine side of
that bridge, Qt-free and importable without torch:

* `check_training_fields`: the section's numbers and the model path, checked
  before anything is written (InputError naming the panel field);
* `export_training_inputs`: the CT node written to an NRRD file in world RAS
  (its parent transforms baked into the file's geometry, the node itself
  untouched), the detector of the Geometry section and the X-ray as
  ``geometry.json``, and the Initial-pose section's start as the reference
  view ``reference_pose.json`` (the C-arm angles when the start mode is the
  pose network itself). It reads the nodes with the engine, so it imports
  torch when called, like every panel action;
* `training_command`: the exact argv of the process;
* `TrainingMonitor`, `TrainingRun` (in `DiffRegLogic.mrml.training_process`,
  re-exported here): the process's output parsed, and its life (poll, cancel).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .. import limits
from ..errors import InputError
from .settings import (POSE_FROM_ANGLES, POSE_FROM_NETWORK, TRAINED_MODEL_FIELDS, TRAINING_SIMILARITY, Setup,
                       path_is_set)
from .training_process import (CANCELLED, DONE, FAILED, IDLE, RUNNING, SIGNAL_EXITS, TERMINATE_GRACE_S,
                               TrainingMonitor, TrainingRun)

__all__ = ["CANCELLED", "DONE", "FAILED", "IDLE", "RUNNING", "SIGNAL_EXITS", "TERMINATE_GRACE_S", "TrainingMonitor",
           "TrainingRun", "CLI_MODULE", "CT_FILE", "GEOMETRY_FILE", "REFERENCE_POSE_FILE", "MAX_MINUTES",
           "IMAGE_SIZE_RANGE", "IMAGE_SIZE_MULTIPLE", "MAX_ROTATION_DEG", "MAX_TRANSLATION_MM", "field_label",
           "check_training_fields", "training_command", "model_field", "engine_root", "TrainingFiles",
           "export_training_inputs"]

CLI_MODULE = "DiffRegLogic.cli"
"""``python -m CLI_MODULE train ...`` is the training process."""
CT_FILE, GEOMETRY_FILE, REFERENCE_POSE_FILE = "ct.nrrd", "geometry.json", "reference_pose.json"
"""Names of the exported inputs in the run's folder."""
MAX_MINUTES = 7 * 24 * 60.0
"""Longest training budget the panel accepts (a week), minutes."""
IMAGE_SIZE_RANGE, IMAGE_SIZE_MULTIPLE = (32, 1024), 32
"""Network input side, pixels: what ``diffreg train --image-size`` accepts."""
MAX_ROTATION_DEG, MAX_TRANSLATION_MM = 180.0, 1000.0
"""Largest sampling ranges ``diffreg train`` accepts (``--max-rot``, ``--max-trans``)."""

_LABELS = {
    "trainingMinutes": ("Training time", "min"),
    "trainingImageSize": ("Image size", "px"),
    "trainingMaxRotation": ("Rotation range", "deg"),
    "trainingMaxTranslation": ("Translation range", "mm"),
    "trainingModelPath": ("Save model as", ""),
}


def field_label(name: str) -> str:
    """How the panel names a training setting: ``Train pose network > Training time (trainingMinutes)``."""
    return f"Train pose network > {_LABELS[name][0]} ({name})"


def _number(setup: Setup, name: str, low: float, high: float, **kw) -> float | int:
    return limits.check_number(field_label(name), getattr(setup, name), low, high, unit=_LABELS[name][1], **kw)


def check_training_fields(setup: Setup) -> None:
    """The Train-pose-network section: budget, image size, ranges, choices and the model path (InputError).

    The same for both kinds (pose network, learned similarity); the backbone
    is the pose network's, the embedding the similarity's.

    The model path must name a ``.pt`` file in an existing folder; an
    existing file is replaced by the new model (the panel asks first).
    """
    setup.check_choices()
    _number(setup, "trainingMinutes", 0.0, MAX_MINUTES, low_open=True)
    size = _number(setup, "trainingImageSize", *IMAGE_SIZE_RANGE, integer=True)
    if size % IMAGE_SIZE_MULTIPLE:
        raise InputError(f"{field_label('trainingImageSize')} is {size} px; the network needs a multiple of "
                         f"{IMAGE_SIZE_MULTIPLE} (e.g. 64, 128, 256)")
    _number(setup, "trainingMaxRotation", 0.0, MAX_ROTATION_DEG)
    _number(setup, "trainingMaxTranslation", 0.0, MAX_TRANSLATION_MM, low_open=True)  # scales the network output
    path = setup.trainingModelPath
    label = field_label("trainingModelPath")
    if not path_is_set(path):
        raise InputError(f"choose where to save the model under {label}: a .pt file")
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise InputError(f"{label} is {path}; the model is a .pt file: end the name with .pt")
    folder = path.expanduser().absolute().parent
    if not folder.is_dir():
        raise InputError(f"{label}: the folder {folder} does not exist; choose an existing folder")
    if path.expanduser().is_dir():
        raise InputError(f"{label}: {path} is a folder; give a file name ending with .pt")


def _g(value: float) -> str:
    """A number for the command line: as short as exact (``30``, ``0.5``, ``12.25``)."""
    return repr(float(value)).removesuffix(".0") if float(value).is_integer() else repr(float(value))


def training_command(python_executable: str | os.PathLike, ct_path: str | os.PathLike,
                     geometry_path: str | os.PathLike, model_path: str | os.PathLike, settings: Setup,
                     reference_pose_path: str | os.PathLike | None = None, *, steps: int | None = None,
                     extra_args: Sequence[str] = ()) -> list[str]:
    """argv of the training process for the panel's settings (the budget in minutes, or ``steps`` when given).

    ``python -u -m DiffRegLogic.cli train --ct CT --geometry G [--reference-pose P] --out MODEL
    --max-rot R --max-trans T (--minutes M | --steps N) --image-size S --backbone B --device D
    --progress json [extra_args...]``; paths are made absolute (the process runs in the engine's
    folder, `engine_root`); ``-u``: unbuffered, so each progress line arrives as it is printed.
    With ``trainingKind`` "learned similarity": ``train --kind similarity`` and ``--embedding E``
    in place of ``--backbone B``. The settings are checked first (`check_training_fields`).
    """
    check_training_fields(settings)
    if steps is not None:
        steps = limits.check_number("training steps", steps, 1, None, integer=True)

    def absolute(path) -> str:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))

    similarity = settings.trainingKind == TRAINING_SIMILARITY
    command = [os.fspath(python_executable), "-u", "-m", CLI_MODULE, "train"]
    command += ["--kind", "similarity"] if similarity else []
    command += ["--ct", absolute(ct_path), "--geometry", absolute(geometry_path)]
    if reference_pose_path is not None:
        command += ["--reference-pose", absolute(reference_pose_path)]
    command += ["--out", absolute(model_path), "--max-rot", _g(settings.trainingMaxRotation),
                "--max-trans", _g(settings.trainingMaxTranslation)]
    command += ["--steps", str(steps)] if steps is not None else ["--minutes", _g(settings.trainingMinutes)]
    command += ["--image-size", str(int(settings.trainingImageSize))]
    command += ["--embedding", settings.trainingEmbedding] if similarity else ["--backbone", settings.trainingBackbone]
    command += ["--device", settings.trainingDevice, "--progress", "json"]
    return command + [str(a) for a in extra_args]


def model_field(kind: str) -> str:
    """The `Setup` field a finished training of ``kind`` (a `settings.TRAINING_KINDS` value) fills with its model."""
    try:
        return TRAINED_MODEL_FIELDS[kind]
    except KeyError:
        raise InputError(f"trainingKind is {kind!r}; choose one of {', '.join(TRAINED_MODEL_FIELDS)}") from None


def engine_root() -> str:
    """The folder that holds the ``DiffRegLogic`` package: the training process's working directory."""
    return str(Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------- the inputs as files


@dataclass(frozen=True)
class TrainingFiles:
    """The exported inputs of one training run (all in ``folder``)."""

    folder: str
    ct: str  # NRRD, HU, world RAS geometry (parent transforms included)
    geometry: str  # detector JSON (`DiffRegLogic.geometry.files.detector_to_dict`)
    reference_pose: str  # camera_from_world JSON of the reference view


def _scalars_view(node):
    """The node's voxels (K, J, I) as stored (a view, no copy; dtype kept)."""
    from vtk.util import numpy_support

    i, j, k = node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(k, j, i)


def export_training_inputs(setup: Setup, folder: str | os.PathLike,
                           file_for_instance: Callable[[str], str] | None = None) -> TrainingFiles:
    """Write the setup's CT, detector and reference view into ``folder`` for ``diffreg train`` (nodes only read).

    * CT (``ct.nrrd``): the CT node's voxels as stored (same type, HU) with
      the geometry Slicer shows it in: IJK->RAS and its linear parent
      transforms, so poses the model predicts are in the world the panel
      registers in. The node is checked as a registration checks it.
    * detector (``geometry.json``): the Geometry section's numbers, the rest
      from the X-ray node (its size, spacing, DICOM tags), as for registration.
    * reference view (``reference_pose.json``): the Initial pose section's
      start (C-arm angles about the CT centre, or the transform node); with
      the start mode "pose network", its C-arm angles.

    InputError (nothing written) when a node or number is unusable.
    """
    from ..geometry.files import detector_to_dict, pose_to_dict, write_json
    from ..volume.io import write_volume
    from .carm import detector_from_setup, geometry_from_xray
    from .checks import check_geometry_fields
    from .nodes import volume_from_node
    from .poses import initial_pose

    setup.check_choices()
    check_geometry_fields(setup)
    if setup.xrayVolume is None:
        raise InputError("select the input X-ray: its size and the Geometry section give the detector the network "
                         "is trained for")
    volume = volume_from_node(setup.inputVolume)  # every check of the CT node
    geo = geometry_from_xray(setup.xrayVolume, file_for_instance)
    detector = detector_from_setup(setup, geo)
    reference = setup
    if setup.initialPoseMode == POSE_FROM_NETWORK:
        reference = dataclasses.replace(setup, initialPoseMode=POSE_FROM_ANGLES)
    pose = initial_pose(reference, volume, geo)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = TrainingFiles(str(folder), str(folder / CT_FILE), str(folder / GEOMETRY_FILE),
                          str(folder / REFERENCE_POSE_FILE))
    write_volume(files.ct, _scalars_view(setup.inputVolume), volume.affine.double().cpu().numpy())
    write_json(files.geometry, detector_to_dict(detector))
    write_json(files.reference_pose, pose_to_dict(pose))
    return files
