"""Training data rendered from the patient's own CT: network inputs, a DRR source, a growing pool, a validation set.

* `network_input`: line integrals (n, H, W) of any size, dtype and device ->
  (n, 1, S, S) float32, resized (area average when shrinking, bilinear when
  growing) and standardised per image (zero mean, unit std). Training DRRs
  and real X-rays (after DiffReg's intensity-convention step) both go
  through it, so the network sees them alike.
* `training_detector`: the detector downsampled so its longer side has at
  most S pixels (same field of view).
* `DRRSource`: motions (n, 6) about the CT centre -> DRRs (n, h, w) at the
  training detector, without gradients, by the fused renderers (numba on
  CPU, Triton on CUDA), in chunks of ``render_batch`` poses.
* `TrainingPool`: the rendered clean DRRs and their motions. With
  incremental learning it grows in K stages: stage k starts at training
  progress k / K and adds ``total_images / K`` fresh poses drawn at the
  range fraction ``start + (1 - start) k / (K - 1)`` (half to full range by
  default); without it, all images are rendered at full range at the first
  `TrainingPool.update`. Stage k's poses come from a generator seeded by
  (seed, k) alone, so a resumed run re-renders exactly the same pool. Every
  draw (`TrainingPool.sample`) augments afresh with the caller's generator.
* `validation_set`: clean DRRs at fixed poses from a seed stream disjoint
  from the training stages'.

Memory: the pool holds float32 line integrals at the render detector's
size (128 x 128 x 4 bytes = 64 KiB per image; 10 000 images = 640 MiB).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..drr.rendering import render
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.rigid import check_pose
from ..limits import SEED_RANGE, check_number
from .augment import Augmentation, augment
from .poses import PoseRange, poses_from_motions, sample_motions

STANDARDIZE_EPS = 1e-6
"""Each image's standard deviation is floored at STANDARDIZE_EPS x its mean absolute value (+ 1e-12): a constant
image (up to float32 rounding) becomes zeros, any other keeps unit standard deviation whatever its units."""
TRAINING_STREAM = 0x7472
"""First word of the seed sequence of the training stages: (TRAINING_STREAM, seed, stage)."""
VALIDATION_STREAM = 0x7661
"""First word of the seed sequence of the validation set: (VALIDATION_STREAM, seed): disjoint from training."""


def _check_image_size(image_size) -> int:
    try:
        return check_number("image_size", image_size, 4, 4096, integer=True)
    except InputError as exc:
        raise InputError(f"{exc}; it is the side (pixels) of the square network input, e.g. 128") from None


def network_input(images: torch.Tensor, image_size: int, *, differentiable: bool = False) -> torch.Tensor:
    """Line integrals (n, H, W) (or (H, W), (n, 1, H, W)) -> (n, 1, S, S) float32 network input on their device.

    Resized to S x S: by area averaging when both sides shrink or stay
    (exact block averages for whole factors), else bilinear (antialiased);
    then each image minus its mean, divided by its standard deviation
    (population; floored, see `STANDARDIZE_EPS`). Raises InputError for non-float,
    empty or non-finite images. ``differentiable``: keep the autograd graph
    to ``images`` (a learned similarity's gradient with respect to the DRR);
    otherwise the input is detached.
    """
    size = _check_image_size(image_size)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise InputError(f"images must be a floating-point tensor (n, H, W) of line integrals, got "
                         f"{type(images).__name__ if not isinstance(images, torch.Tensor) else images.dtype}")
    x = images
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise InputError(f"images must be (n, H, W), (n, 1, H, W) or (H, W), got {tuple(images.shape)}")
    if x.shape[0] == 0:
        return x.new_zeros((0, 1, size, size), dtype=torch.float32)
    x = (x if differentiable else x.detach()).to(torch.float64)[:, None]  # float64: a constant stays constant
    if not torch.isfinite(x.detach()).all():
        raise InputError("images contain NaN or infinite values; mask or fill them before the network sees them")
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        if h >= size and w >= size:
            x = F.interpolate(x, size=(size, size), mode="area")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    floor = STANDARDIZE_EPS * x.abs().mean(dim=(-2, -1), keepdim=True) + 1e-12
    if differentiable:  # sqrt(var + floor^2): a finite gradient at a constant image too
        std = ((x - mean).square().mean(dim=(-2, -1), keepdim=True) + floor.square()).sqrt()
    else:
        std = torch.maximum(x.std(dim=(-2, -1), keepdim=True, correction=0), floor)
    return ((x - mean) / std).to(torch.float32)


def training_detector(detector: Detector, image_size: int) -> Detector:
    """``detector`` with its longer side at ``image_size`` px (never more pixels than it has): same field of view."""
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    size = _check_image_size(image_size)
    return detector.downsample(max(1.0, max(detector.rows, detector.cols) / size))


def _generator(*words: int) -> torch.Generator:
    """A CPU generator seeded by a hashed sequence of whole numbers (independent streams for different words)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) | (int(state[1]) << 32))


def stage_generator(seed: int, stage: int) -> torch.Generator:
    """The generator of training stage ``stage``'s poses: a function of (seed, stage) only."""
    return _generator(TRAINING_STREAM, seed, stage)


def validation_generator(seed: int) -> torch.Generator:
    """The generator of the validation poses (a stream disjoint from every training stage)."""
    return _generator(VALIDATION_STREAM, seed)


class DRRSource:
    """Renders DRRs (line integrals) of motions about the CT centre at the training detector, without gradients.

    Args:
        volume: the patient's CT (`DiffRegLogic.volume.Volume`, or a `MaterialVolume` for polychromatic DRRs).
        detector: the X-ray detector; DRRs are rendered at `training_detector` (detector, image_size).
        reference_pose: camera_from_world (4, 4) of the zero motion (e.g. `poses.reference_view`).
        image_size: side S (px) of the network input.
        renderer: "siddon" or "trilinear".
        device: "cpu", "cuda", "cuda:N" or "auto"; the volume is copied there once.
        render_batch: poses per render call (memory: render_batch x h x w outputs).
        backend: render backend; None: "fused" on CPU (numba), "auto" on CUDA (Triton where available).

    Attributes: ``render_detector``, ``center`` (CT centre (3,) float64 RAS mm, CPU), ``reference_pose``
    (4, 4) float64 CPU, ``image_size``, ``device``.
    """

    def __init__(self, volume, detector: Detector, reference_pose, *, image_size: int = 128,
                 renderer: str = "siddon", device: str | torch.device = "cpu", render_batch: int = 32,
                 backend: str | None = None) -> None:
        if not isinstance(getattr(volume, "center", None), torch.Tensor) or not hasattr(volume, "to"):
            raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
        self.image_size = _check_image_size(image_size)
        self.render_detector = training_detector(detector, self.image_size)
        self.detector = detector
        self.reference_pose = check_pose(reference_pose, name="reference_pose")[0].detach().to("cpu", torch.float64)
        self.device = resolve_device(device)
        self.volume = volume.to(self.device)
        self.center = volume.center.detach().to("cpu", torch.float64)
        if renderer not in ("siddon", "trilinear"):
            raise InputError(f"unknown renderer {renderer!r}; choose siddon or trilinear")
        self.renderer = renderer
        self.render_batch = check_number("render_batch", render_batch, 1, 1_000_000, integer=True)
        self.backend = backend if backend is not None else ("fused" if self.device.type == "cpu" else "auto")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(h, w) of the rendered DRRs (the render detector's shape)."""
        return self.render_detector.shape

    def render(self, motions: torch.Tensor) -> torch.Tensor:
        """DRRs (n, h, w) float32 on ``device`` of motions (n, 6) [rotation vector rad, translation mm]."""
        poses = poses_from_motions(self.reference_pose, torch.as_tensor(motions).detach().cpu(), self.center)
        h, w = self.image_shape
        if poses.shape[0] == 0:
            return torch.zeros(0, h, w, dtype=torch.float32, device=self.device)
        dtype = self.volume.mu.dtype if self.volume.mu.is_floating_point() else torch.float32
        out = []
        with torch.no_grad():
            for start in range(0, poses.shape[0], self.render_batch):
                chunk = poses[start:start + self.render_batch].to(device=self.device, dtype=dtype)
                out.append(render(self.volume, self.render_detector, chunk, self.renderer,
                                  backend=self.backend).to(torch.float32))
        return torch.cat(out)


def _check_source(source) -> DRRSource:
    if not isinstance(source, DRRSource):
        raise InputError(f"source must be a DRRSource, got {type(source).__name__}")
    return source


def _check_range(pose_range) -> PoseRange:
    if not isinstance(pose_range, PoseRange):
        raise InputError(f"pose_range must be a PoseRange, got {type(pose_range).__name__}")
    return pose_range


def _check_seed(seed) -> int:
    return check_number("seed", seed, *SEED_RANGE, integer=True)


class TrainingPool:
    """Rendered clean DRRs and their motions, growing in stages as training progresses (see the module docstring).

    Args:
        source: the `DRRSource` that renders.
        pose_range: the full sampling range.
        total_images: images held once every stage is rendered (at least ``stages`` when incremental).
        incremental: grow in stages with a widening range (True) or render everything at full range at once.
        stages: K, the number of stages (ignored without ``incremental``).
        start_fraction: range fraction of stage 0, in (0, 1] (stage K - 1 is at 1).
        augmentation: applied at each `sample` draw (None: none).
        seed: stage k's poses come from `stage_generator` (seed, k).

    Attributes: ``stage`` (stages rendered so far, 0..K), ``size`` (images held), ``fraction`` (range fraction
    of the latest rendered stage; that of stage 0 before the first update), ``images`` (size, h, w) float32,
    ``motions`` (size, 6) float64 (both on the source's device).
    """

    def __init__(self, source: DRRSource, pose_range: PoseRange, total_images: int, *, incremental: bool = True,
                 stages: int = 4, start_fraction: float = 0.5, augmentation: Augmentation | None = None,
                 seed: int = 0) -> None:
        self.source = _check_source(source)
        self.pose_range = _check_range(pose_range)
        if not isinstance(incremental, bool):
            raise InputError(f"incremental must be True or False, got {incremental!r}")
        self.incremental = incremental
        self.total_images = check_number("total_images", total_images, 1, None, integer=True)
        stages = check_number("stages", stages, 1, 10_000, integer=True)
        self.stages = stages if incremental else 1
        if self.total_images < self.stages:
            raise InputError(f"total_images ({self.total_images}) must be at least the number of stages "
                             f"({self.stages}): every stage adds fresh images")
        self.start_fraction = check_number("start_fraction", start_fraction, 0.0, 1.0, low_open=True)
        if augmentation is not None and not isinstance(augmentation, Augmentation):
            raise InputError(f"augmentation must be an Augmentation or None, got {type(augmentation).__name__}")
        self.augmentation = augmentation
        self.seed = _check_seed(seed)
        h, w = source.image_shape
        self.images = torch.zeros(0, h, w, dtype=torch.float32, device=source.device)
        self.motions = torch.zeros(0, 6, dtype=torch.float64, device=source.device)
        self.stage = 0

    def stage_size(self, k: int) -> int:
        """Images stage k adds: total // K, the first total % K stages one more."""
        base, extra = divmod(self.total_images, self.stages)
        return base + (1 if k < extra else 0)

    def stage_fraction(self, k: int) -> float:
        """Range fraction of stage k: start + (1 - start) k / (K - 1); 1 with a single stage."""
        if self.stages == 1:
            return 1.0
        return self.start_fraction + (1.0 - self.start_fraction) * k / (self.stages - 1)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    @property
    def fraction(self) -> float:
        return self.stage_fraction(max(self.stage - 1, 0))

    def update(self, progress: float) -> int:
        """Render every stage whose start k / K is <= ``progress`` (in [0, 1]) not rendered yet; the images added."""
        progress = check_number("training progress", progress, 0.0, 1.0)
        added = 0
        while self.stage < self.stages and self.stage / self.stages <= progress:
            k = self.stage
            motions = sample_motions(self.stage_size(k), self.pose_range.scaled(self.stage_fraction(k)),
                                     stage_generator(self.seed, k))
            images = self.source.render(motions)
            self.images = torch.cat([self.images, images])
            self.motions = torch.cat([self.motions, motions.to(self.motions.device)])
            self.stage += 1
            added += images.shape[0]
        return added

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch drawn with replacement: (images (b, 1, S, S) float32 network input, motions (b, 6) float64).

        Images are augmented afresh at each draw (``augmentation``, randomness from ``generator``), then
        `network_input`. Both tensors lie on the source's device.
        """
        if self.size == 0:
            raise InputError("the training pool is empty: call update(progress) before sample()")
        batch_size = check_number("batch_size", batch_size, 1, 1_000_000, integer=True)
        if not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        index = torch.randint(self.size, (batch_size,), generator=generator, device=generator.device)
        index = index.to(self.images.device)
        images = self.images[index]
        if self.augmentation is not None:
            images = augment(images, self.augmentation, generator)
        return network_input(images, self.source.image_size), self.motions[index]


def validation_set(source: DRRSource, pose_range: PoseRange, n: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean validation data: (images (n, 1, S, S) float32, motions (n, 6) float64, poses (n, 4, 4) float64).

    Motions are drawn at the full ``pose_range`` from `validation_generator` (seed): fixed by the seed and
    independent of the training stages' poses. Images and motions lie on the source's device, poses on the CPU.
    """
    source = _check_source(source)
    pose_range = _check_range(pose_range)
    n = check_number("validation images", n, 1, None, integer=True)
    motions = sample_motions(n, pose_range, validation_generator(_check_seed(seed)))
    images = network_input(source.render(motions), source.image_size)
    poses = poses_from_motions(source.reference_pose, motions, source.center)
    return images, motions.to(source.device), poses
