"""Pose-network checkpoints: what a model file holds, fingerprints of the CT and detector, loading with checks.

A model file (``diffreg train --out MODEL.pt``) is a ``torch.save`` of one
dict of tensors and plain values, so it loads with
``torch.load(weights_only=True)`` (no code runs when a file is read):

``format`` ("diffreg-pose-network"), ``format_version``, ``diffreg_version``,
``config`` (`TrainConfig.to_dict`), ``weights`` (the network's state_dict),
``reference_pose`` (4, 4) and ``center`` (3,) float64 (RAS mm), ``volume_fingerprint``,
``detector_fingerprint``, ``detector`` (`geometry.files.detector_to_dict` of
the full-resolution detector), ``validation`` (last validation dict),
``history`` (list of dicts), ``optimizer`` (state_dict), ``step``,
``elapsed_s``, ``complete`` (False for a checkpoint of an unfinished run),
``world_size``, ``generator_states`` (one ByteTensor per rank: the batch
draws), ``rng_state`` (torch's global CPU generator on rank 0: dropout),
``rng_states`` (that generator on every rank) and ``cuda_rng_state`` (or None).

Fingerprints identify the patient's CT and the C-arm without storing them:

* `fingerprint_volume`: sha256 of the JSON of the grid shape, the affine
  rounded to 1e-3 mm and the means of mu over a 16 x 16 x 16 grid of blocks
  (fewer along short axes) rounded to 4 significant digits, computed in
  float64 on the CPU, so float32 and float64 copies of one CT, on any
  device, share a fingerprint, while a shifted, rescaled or different CT does not;
* `fingerprint_detector`: sha256 of the JSON of the detector dict with
  every number rounded to 1e-6.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.files import detector_to_dict
from ..volume.ct import Volume

FORMAT = "diffreg-pose-network"
SIMILARITY_FORMAT = "diffreg-similarity-network"
"""The format of a learned similarity's model file (`similarity_trainer`): the same layout, its own config."""
FORMAT_VERSION = 1
AGNOSTIC_FINGERPRINT = "patient-agnostic"
"""The volume fingerprint of a model trained on many CTs (phantoms): it is not refused for any CT."""
_KIND = {FORMAT: "pose network", SIMILARITY_FORMAT: "learned similarity"}
_USE = {FORMAT: "give it to `diffreg register --model`",
        SIMILARITY_FORMAT: "give it to `diffreg register --similarity learned --similarity-model`"}
FINGERPRINT_BLOCKS = 16
"""Blocks per axis of the mu means in `fingerprint_volume` (fewer along axes with fewer voxels)."""

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelInfo", "fingerprint_volume", "fingerprint_detector", "save_checkpoint",
           "read_checkpoint", "load_pose_network", "check_volume", "check_detector"]


# --------------------------------------------------------------------------- fingerprints


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits - 1}e}") if x != 0 and math.isfinite(x) else 0.0


def fingerprint_volume(volume: Volume) -> str:
    """sha256 hex digest of the CT's grid shape, affine (1e-3 mm) and block means of mu (4 significant digits)."""
    if not isinstance(volume, Volume):
        raise InputError(f"the CT to fingerprint must be a DiffRegLogic Volume, got {type(volume).__name__}")
    # rounded to float32 first: a CT converted in float32 and the same CT in float64 differ in the last bits
    mu = volume.mu.detach().to(torch.float32)
    shape = list(mu.shape)
    means = []
    for block in torch.tensor_split(mu, min(FINGERPRINT_BLOCKS, shape[0]), dim=0):
        plane = block.to("cpu", torch.float64).sum(0)  # (J, I)
        count = block.shape[0]
        for rows in torch.tensor_split(plane, min(FINGERPRINT_BLOCKS, shape[1]), dim=0):
            line = rows.sum(0)
            for cells in torch.tensor_split(line, min(FINGERPRINT_BLOCKS, shape[2]), dim=0):
                means.append(_significant(float(cells.sum()) / (count * rows.shape[0] * cells.shape[0])))
    affine = [[round(float(v), 3) + 0.0 for v in row] for row in volume.affine.detach().cpu().double().tolist()]
    text = json.dumps({"shape": shape, "affine": affine, "mu_block_means": means}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, float):
        return round(value, 6) + 0.0
    return value


def fingerprint_detector(detector: Detector | dict) -> str:
    """sha256 hex digest of the detector dict (`geometry.files.detector_to_dict`), numbers rounded to 1e-6."""
    data = detector if isinstance(detector, dict) else detector_to_dict(detector)
    return hashlib.sha256(json.dumps(_rounded(data), separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- model info


@dataclass
class ModelInfo:
    """What a model file says about its network (everything but the weights).

    Attributes:
        config: the `TrainConfig` it was trained with.
        reference_pose: (4, 4) float64 camera_from_world the predicted motions are relative to.
        center: (3,) float64 CT centre (RAS mm) the motions rotate about.
        image_size: S, the network's input side (pixels).
        pose_range: the `PoseRange` it was trained on.
        detector_shape: (rows, cols) of the full-resolution detector it was trained for.
        version: the DiffReg version that wrote it; ``format_version`` its file format.
        volume_fingerprint, detector_fingerprint: see `fingerprint_volume`, `fingerprint_detector`.
        detector: the detector dict it was trained for.
        validation: the last validation (``mtre_mm_median`` ..., mm / deg), {} if none.
        history: list of the run's progress and validation records.
        step, elapsed_s: optimiser steps and training time (s) so far; ``complete``: the run finished.
    """

    config: object
    reference_pose: torch.Tensor
    center: torch.Tensor
    image_size: int
    pose_range: object
    detector_shape: tuple[int, int]
    version: str
    format_version: int
    volume_fingerprint: str
    detector_fingerprint: str
    detector: dict
    validation: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    step: int = 0
    elapsed_s: float = 0.0
    complete: bool = True

    @property
    def fingerprints(self) -> dict:
        """{"volume": ..., "detector": ...}."""
        return {"volume": self.volume_fingerprint, "detector": self.detector_fingerprint}


# --------------------------------------------------------------------------- saving


def save_checkpoint(path: str | os.PathLike, *, config, weights: dict, reference_pose: torch.Tensor,
                    center: torch.Tensor, volume: Volume, detector: Detector, validation: dict | None = None,
                    history: list | None = None, optimizer: dict | None = None, step: int = 0,
                    elapsed_s: float = 0.0, complete: bool = True, world_size: int = 1,
                    generator_states: list | None = None, rng_state: torch.Tensor | None = None,
                    rng_states: list | None = None, cuda_rng_state: torch.Tensor | None = None,
                    volume_fingerprint: str | None = None, format: str = FORMAT) -> dict:
    """Write a model file atomically (a temporary file beside ``path``, then ``os.replace``); returns the dict.

    ``config`` is a `TrainConfig` (or the similarity's config); ``weights`` a
    state_dict (moved to the CPU here); ``volume_fingerprint`` may be passed
    to skip recomputing it (``volume`` may then be None); ``format``:
    `FORMAT` or `SIMILARITY_FORMAT`.
    """
    path = Path(path)
    checkpoint = {
        "format": format,
        "format_version": FORMAT_VERSION,
        "diffreg_version": __version__,
        "config": config.to_dict(),
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
        "reference_pose": torch.as_tensor(reference_pose).detach().to("cpu", torch.float64).reshape(4, 4).clone(),
        "center": torch.as_tensor(center).detach().to("cpu", torch.float64).reshape(3).clone(),
        "volume_fingerprint": volume_fingerprint or fingerprint_volume(volume),
        "detector_fingerprint": fingerprint_detector(detector),
        "detector": detector_to_dict(detector),
        "validation": dict(validation or {}),
        "history": list(history or []),
        "optimizer": _to_cpu(optimizer) if optimizer is not None else None,
        "step": int(step),
        "elapsed_s": float(elapsed_s),
        "complete": bool(complete),
        "world_size": int(world_size),
        "generator_states": [s.detach().cpu() for s in (generator_states or [])],
        "rng_state": None if rng_state is None else rng_state.detach().cpu(),
        "rng_states": [s.detach().cpu() for s in (rng_states or [])],
        "cuda_rng_state": None if cuda_rng_state is None else cuda_rng_state.detach().cpu(),
    }
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return checkpoint


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


# --------------------------------------------------------------------------- reading


_TRAIN_HINT = "train one with `diffreg train --ct CT --geometry G.json --out MODEL.pt`"
_HINTS = {FORMAT: _TRAIN_HINT,
          SIMILARITY_FORMAT: "train one with `diffreg train --kind similarity --ct CT --geometry G.json --out SIM.pt`"}


def read_checkpoint(path: str | os.PathLike, format: str = FORMAT) -> dict:
    """The dict of a model file of ``format``, after checking that this DiffReg can read it (InputError otherwise)."""
    path = Path(path)
    kind = _KIND[format]
    _TRAIN_HINT = _HINTS[format]  # noqa: N806 (the hint of this kind of model)
    if not path.exists():
        raise InputError(f"model file {path} does not exist; check the path, or {_TRAIN_HINT}")
    if not path.is_file():
        raise InputError(f"model file {path} is not a file (a directory?); give the .pt file `diffreg train` wrote")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            AttributeError, ImportError, KeyError, TypeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model file {path} is not a readable DiffReg {kind} (not a torch file, truncated "
                         f"or corrupt: {reason[:200]}); {_TRAIN_HINT}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found in _KIND and found != format:
        raise InputError(f"{path} is a DiffReg {_KIND[found]}, not a {kind}; {_USE[found]}")
    if found != format:
        raise InputError(f"{path} is a torch file but not a DiffReg {kind} (no format '{format}'); give a "
                         f"model written by `diffreg train`, or {_TRAIN_HINT}")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"model file {path} has no valid format_version ({version!r}); it is corrupt: {_TRAIN_HINT}")
    if version > FORMAT_VERSION:
        raise InputError(f"model file {path} has format version {version}, newer than the {FORMAT_VERSION} this "
                         f"DiffReg {__version__} reads (it was written by DiffReg {data.get('diffreg_version')}); "
                         "update DiffReg")
    missing = [k for k in ("config", "weights", "reference_pose", "center", "volume_fingerprint",
                           "detector_fingerprint", "detector") if k not in data]
    if missing:
        raise InputError(f"model file {path} lacks {', '.join(missing)}; it is corrupt or incomplete: {_TRAIN_HINT}")
    return data


def check_volume(data: dict, volume: Volume, path="the model") -> None:
    """InputError unless ``volume`` has the fingerprint the checkpoint ``data`` was trained on."""
    if data["volume_fingerprint"] == AGNOSTIC_FINGERPRINT:
        return
    fingerprint = fingerprint_volume(volume)
    if fingerprint != data["volume_fingerprint"]:
        raise InputError(f"the model {path} was trained on another CT (fingerprint {data['volume_fingerprint'][:12]}, "
                         f"this CT's is {fingerprint[:12]}); train one for this CT with "
                         "`diffreg train --ct CT --geometry G.json --out MODEL.pt`")


def detector_differences(stored: dict, detector: Detector) -> list[str]:
    """Human list of the fields where ``detector`` differs from the ``stored`` detector dict."""
    given = _rounded(detector_to_dict(detector))
    stored = _rounded(stored)
    return [f"{key} {stored.get(key)} (model) vs {given.get(key)} (given)"
            for key in sorted(set(stored) | set(given)) if stored.get(key) != given.get(key)]


def check_detector(data: dict, detector: Detector, path="the model") -> None:
    """InputError unless ``detector`` is the one the checkpoint ``data`` was trained for (says which fields differ)."""
    if fingerprint_detector(detector) != data["detector_fingerprint"]:
        diff = detector_differences(data["detector"], detector) or ["the fingerprint"]
        raise InputError(f"the model {path} was trained for another detector: {'; '.join(diff)}; use that "
                         "geometry, or train a model for this detector with `diffreg train`")


def model_info(data: dict) -> ModelInfo:
    """`ModelInfo` of a checkpoint dict (`read_checkpoint`)."""
    from .schedule import TrainConfig

    config = TrainConfig.from_dict(data["config"])
    detector = dict(data["detector"])
    return ModelInfo(
        config=config, reference_pose=torch.as_tensor(data["reference_pose"], dtype=torch.float64),
        center=torch.as_tensor(data["center"], dtype=torch.float64), image_size=int(config.network.image_size),
        pose_range=config.pose_range, detector_shape=(int(detector["rows"]), int(detector["cols"])),
        version=str(data.get("diffreg_version")), format_version=int(data["format_version"]),
        volume_fingerprint=data["volume_fingerprint"], detector_fingerprint=data["detector_fingerprint"],
        detector=detector, validation=dict(data.get("validation") or {}), history=list(data.get("history") or []),
        step=int(data.get("step", 0)), elapsed_s=float(data.get("elapsed_s", 0.0)),
        complete=bool(data.get("complete", True)))


def load_pose_network(path: str | os.PathLike, volume: Volume | None = None, detector: Detector | None = None,
                      device: str | torch.device = "cpu"):
    """(PoseNet in eval mode on ``device``, `ModelInfo`) from a model file.

    Refuses (InputError) a missing, unreadable or corrupt file, a torch file
    that is not a pose network, a newer format, and, when given, another
    CT (``volume``) or another detector (``detector``, saying which fields differ).
    """
    from .networks import PoseNet

    data = read_checkpoint(path)
    try:
        info = model_info(data)
    except InputError as exc:
        raise InputError(f"model file {path} has a configuration this DiffReg cannot use ({exc}); {_TRAIN_HINT}") \
            from None
    if volume is not None:
        check_volume(data, volume, path)
    if detector is not None:
        check_detector(data, detector, path)
    model = PoseNet(info.config.network)
    try:
        model.load_state_dict(data["weights"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model file {path}: the weights do not fit the network its config describes "
                         f"({reason[:200]}); the file is corrupt: {_TRAIN_HINT}") from None
    return model.to(device).eval(), info
