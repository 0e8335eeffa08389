"""The trained pose network as an initialiser: an X-ray in, start poses for the registration out.

`PoseNetworkInitializer` is a callable ``(xray, detector, volume) -> (K, 4, 4)``,
the protocol of `DiffRegLogic.registration.initializers`: pass it to
`DiffRegLogic.registration.register` as the start, and the K hypotheses feed
the multi-start (all are optimised on the coarsest level, the best goes on).

Hypothesis 0 is the network's prediction on the X-ray as it is; the others
are its predictions on mildly perturbed copies (test-time augmentation:
seeded detector blur, quantum noise and a gamma change, see `TTA_AUGMENTATION`),
so that a prediction which hangs on a few pixels' values has a neighbour to
fall back on. The hypotheses are deduplicated by the registration's own
multi-start, not here.

The X-ray must be in the line-integral convention (bone bright, what
`DiffRegLogic.xray` gives after the intensity convention is resolved) on the
detector the model was trained for: `PoseNetworkInitializer.from_file` refuses
another CT or another detector with the checkpoint's own message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import motion_about_center
from ..volume.ct import Volume

DEFAULT_HYPOTHESES = 4
"""Network poses handed to the multi-start: the plain prediction and 3 test-time augmented ones."""
TTA_SEED = 0
"""Seed of the test-time augmentations (the hypotheses are the same at every call)."""


def _tta_augmentation():
    """Mild augmentations for the extra hypotheses: quantum noise, a little blur, a gamma change (nothing else)."""
    from .augment import NO_AUGMENTATION

    return replace(NO_AUGMENTATION, noise_probability=1.0, photons_range=(3e4, 1e5), blur_probability=0.5,
                   blur_sigma_range=(0.002, 0.005), window_probability=1.0, gamma_range=(0.85, 1.15),
                   window_low_range=(0.0, 0.0), window_high_range=(100.0, 100.0))


@dataclass
class PoseNetworkInitializer:
    """Start poses from a trained pose network (see the module docstring).

    Attributes:
        model: the `PoseNet` in eval mode.
        info: the checkpoint's `ModelInfo` (config, reference pose, centre, image size, fingerprints).
        hypotheses: K >= 1 poses returned per call.
        device: where the network runs.
        last_prediction: (4, 4) float64, the network's pose at the last call (hypothesis 0), or None.
        last_seconds: wall time of the last call's inference (s).
    """

    model: Any
    info: Any
    hypotheses: int = DEFAULT_HYPOTHESES
    device: str | torch.device = "cpu"
    last_prediction: torch.Tensor | None = field(default=None, init=False)
    last_hypotheses: torch.Tensor | None = field(default=None, init=False)
    last_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.hypotheses, bool) or not isinstance(self.hypotheses, int) or not 1 <= self.hypotheses <= 64:
            raise InputError(f"the pose network's hypotheses must be a whole number from 1 to 64, got {self.hypotheses!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike, volume: Volume | None = None, detector: Detector | None = None, *,
                  hypotheses: int = DEFAULT_HYPOTHESES, device: str | torch.device = "cpu") -> "PoseNetworkInitializer":
        """Load a model written by ``diffreg train``; refuses another CT or detector (`load_pose_network`)."""
        from .checkpoint import load_pose_network

        model, info = load_pose_network(path, volume=volume, detector=detector, device=device)
        return cls(model, info, hypotheses=hypotheses, device=device)

    @property
    def reference_pose(self) -> torch.Tensor:
        """(4, 4) float64: the view the model's poses are relative to."""
        return torch.as_tensor(self.info.reference_pose, dtype=torch.float64)

    @property
    def center(self) -> torch.Tensor:
        """(3,) float64: the CT centre (RAS mm) the model's motions rotate about."""
        return torch.as_tensor(self.info.center, dtype=torch.float64)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Poses (B, 4, 4) float64 camera_from_world for line-integral images (H, W) or (B, H, W) on the model's detector."""
        from .data import network_input

        images = torch.as_tensor(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise InputError(f"the pose network takes an (H, W) or (B, H, W) X-ray, got shape {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise InputError("the X-ray given to the pose network has NaN or infinite values; check the file")
        x = network_input(images.detach().to(self.device, torch.float32), int(self.info.image_size))
        with torch.no_grad():
            prediction = self.model(x)
        rotation = prediction.rotation.detach().to("cpu", torch.float64)
        translation = prediction.translation_mm.detach().to("cpu", torch.float64)
        motion = motion_about_center(rotation, translation, self.center)
        return self.reference_pose @ motion

    def __call__(self, xray: Any, detector: Detector, volume: Volume) -> torch.Tensor:
        """(K, 4, 4) start poses for ``xray`` (an `XRay` or its (H, W) line-integral image)."""
        image = getattr(xray, "image", xray)
        image = torch.as_tensor(image)
        stored = getattr(self.info, "detector_fingerprint", None)
        if stored is not None and isinstance(detector, Detector):
            from .checkpoint import fingerprint_detector

            if fingerprint_detector(detector) != stored:
                raise InputError("the pose network was trained for another detector than the one given with this "
                                 "X-ray (its geometry JSON); use the geometry it was trained for, or train a model "
                                 "for this one with diffreg train")
        expected = self.info.detector_shape if hasattr(self.info, "detector_shape") else None
        if expected is not None and tuple(image.shape[-2:]) != tuple(expected):
            raise InputError(f"the pose network was trained for a {expected[0]} x {expected[1]} X-ray, got "
                             f"{image.shape[-2]} x {image.shape[-1]}: use the detector (and no crop) it was trained for")
        t0 = time.perf_counter()
        batch = [image]
        if self.hypotheses > 1:
            from .augment import augment

            generator = torch.Generator().manual_seed(TTA_SEED)
            extra = augment(image[None].repeat(self.hypotheses - 1, 1, 1).to(torch.float32), _tta_augmentation(),
                            generator)
            batch.extend(extra.to(image.dtype))
        poses = self.predict(torch.stack([torch.as_tensor(b) for b in batch]))
        self.last_seconds = time.perf_counter() - t0
        self.last_prediction = poses[0].clone()
        self.last_hypotheses = poses.clone()
        return poses


def network_start(network: PoseNetworkInitializer, xray, detector: Detector, volume: Volume,
                  renderer: str = "siddon", **render_options):
    """(the X-ray with its intensity convention resolved, the network's start poses (K, 4, 4)) for one `XRay`.

    When nothing stated the X-ray's convention (``meta["intensity_source"] ==
    "default"``), it is detected against a DRR at the model's reference view,
    the network predicts on the converted image, the convention is detected
    again from the original X-ray at the predicted pose (closer to the truth
    than the reference view, where a raw/log decision can fail at the
    training range's edge), and if that changes the convention the network
    predicts again. Otherwise the X-ray is used as it is. Shared by
    ``diffreg register --model`` and the Slicer panel, so both start alike.
    """
    from ..xray.convention import resolve_at_pose

    if getattr(xray, "meta", {}).get("intensity_source") != "default":
        return xray, network(xray, detector, volume)
    first = resolve_at_pose(xray, detector, volume, network.reference_pose, renderer, **render_options)
    poses = network(first, detector, volume)
    again = resolve_at_pose(xray, detector, volume, poses[0], renderer, **render_options)
    if again.meta.get("intensity_detected") != first.meta.get("intensity_detected"):
        first, poses = again, network(again, detector, volume)
    return first, poses
