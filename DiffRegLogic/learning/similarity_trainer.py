"""Training the learned similarity: ProST's gradient-direction matching plus a distance regression.

For a batch of pairs (`similarity_data`): the target t (an augmented DRR at
the true pose, standing in for the X-ray) and the DRR x at a pose P(xi)
near it go through the same encoder; the learned distance is

    s(x, t) = d^2(e(x), e(t)) / K        (`so4.distance_sq` over the K groups)

and its gradient with respect to the pose parameters is taken through the
DRR Jacobian J = d x / d xi (rendered with the pair, `drr.jacobian`):

    g = d s / d xi = J^T (d s / d x)

with ``create_graph=True`` on d s / d x, so the double backward runs through
the network only, never through the renderer. The loss (weights chosen
here) is

    direction_weight * [(1 - cos(g_rot, g*_rot)) + (1 - cos(g_trans, g*_trans))] / 2
    + distance_weight * (sqrt(s) - D)^2

with g* the gradient of the normalised SE(3) geodesic distance D to the
truth (`similarity_data.geodesic_distance`), its rotation and translation
parts compared separately (ProST normalises them apart: they have different
units). Minimising s along -g then moves the pose along the geodesic home.

Validation (held-out pairs, clean targets): the mean of the two cosines
("cosine", also per part), the same cosine for ZNCC (1 - ZNCC as the
distance, "baseline_cosine"), and the Pearson correlation of sqrt(s) with D
("distance_corr").

The loop, checkpoints (format `checkpoint.SIMILARITY_FORMAT`), resume,
progress records and torchrun are the pose network's (`loop.TrainingLoop`).
Patient-agnostic training (``phantoms > 0``) renders its pairs from that
many seeded phantoms of varied anatomy (`volume.phantoms.varied_chest_phantom`)
instead of the patient's CT; its model file is accepted for any CT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import SEED_RANGE
from . import checkpoint as ckpt
from . import so4
from .augment import DEFAULT_AUGMENTATION, Augmentation
from .configs import known_fields
from .data import network_input
from .distributed import unwrap
from .poses import PoseRange
from .schedule import RENDERERS, _number, check_loop_fields
from .similarity_data import PairPool, PairSource, Pairs, validation_pairs
from .similarity_net import SimilarityNet, SimilarityNetConfig
from .loop import TrainingLoop, TrainResult, run_training

__all__ = ["SimilarityTrainConfig", "similarity_gradients", "similarity_loss", "validate_similarity",
           "train_similarity", "training_volumes"]

SIMILARITY_AUGMENTATION = dataclasses.replace(DEFAULT_AUGMENTATION, inversion_probability=0.0)
"""The targets' augmentation: the pose network's, without inversion (registration resolves the convention first)."""
PHANTOM_SEED_STRIDE = 1000
"""Phantom i of a patient-agnostic run with seed s has anatomy seed s * PHANTOM_SEED_STRIDE + i + 1."""


@dataclass(frozen=True)
class SimilarityTrainConfig:
    """Everything that fixes a similarity training run (stored in the model file); see the module docstring.

    Budget: exactly one of ``steps`` and ``minutes``. ``target_range``: the
    true poses about the reference view; ``offset_range``: the DRRs' offsets
    from them (the capture range the similarity is trained for). ``phantoms``:
    0 for a patient-specific model (the CT given to `train_similarity`), N > 0
    for a patient-agnostic one on N seeded phantoms. ``source_to_isocenter_mm``:
    of each CT's AP reference view when no reference pose is given (None: SDD / 2).
    """

    network: SimilarityNetConfig = field(default_factory=SimilarityNetConfig)
    target_range: PoseRange = field(default_factory=lambda: PoseRange(30.0, 40.0))
    offset_range: PoseRange = field(default_factory=lambda: PoseRange(45.0, 60.0))
    batch_size: int = 16
    steps: int | None = None
    minutes: float | None = None
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    direction_weight: float = 1.0
    distance_weight: float = 1.0
    pool_pairs: int = 2048
    stages: int = 4
    augmentation: Augmentation = field(default_factory=lambda: SIMILARITY_AUGMENTATION)
    validation_pairs: int = 64
    validate_every: float = 60.0
    checkpoint_every: float = 300.0
    log_every: int = 10
    phantoms: int = 0
    source_to_isocenter_mm: float | None = None
    seed: int = 0
    device: str = "cpu"
    renderer: str = "siddon"

    def __post_init__(self) -> None:
        for name, kind in (("network", SimilarityNetConfig), ("target_range", PoseRange),
                           ("offset_range", PoseRange), ("augmentation", Augmentation)):
            if not isinstance(getattr(self, name), kind):
                raise InputError(f"training {name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        check_loop_fields(self)
        _number("direction_weight", self.direction_weight, 0)
        _number("distance_weight", self.distance_weight, 0)
        if not (max(self.offset_range.rotation_deg) > 0 and max(self.offset_range.translation_mm) > 0):
            raise InputError("the offset range needs a rotation and a translation half-width above 0: the loss "
                             "compares the rotation and translation parts of the gradient separately")
        if self.direction_weight + self.distance_weight <= 0:
            raise InputError("at least one of direction_weight and distance_weight must be positive")
        _number("pool_pairs", self.pool_pairs, 1, integer=True)
        _number("stages", self.stages, 1, integer=True)
        _number("validation_pairs", self.validation_pairs, 1, integer=True)
        _number("validate_every", self.validate_every, 0)
        _number("checkpoint_every", self.checkpoint_every, 0)
        _number("log_every", self.log_every, 1, integer=True)
        _number("phantoms", self.phantoms, 0, 10_000, integer=True)
        if self.source_to_isocenter_mm is not None:
            _number("source_to_isocenter_mm", self.source_to_isocenter_mm, 0, low_open=True)
        _number("seed", self.seed, *SEED_RANGE, integer=True)
        if not isinstance(self.device, str):
            raise InputError(f"training device must be a string (auto, cpu, cuda, cuda:N), got {self.device!r}")
        if self.renderer not in RENDERERS:
            raise InputError(f"training renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")

    @property
    def agnostic(self) -> bool:
        """Trained on phantoms (any CT may use it) rather than on one patient's CT."""
        return self.phantoms > 0

    @property
    def budget_seconds(self) -> float | None:
        return None if self.minutes is None else float(self.minutes) * 60.0

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("network", "target_range", "offset_range", "augmentation"):
            out[name] = out[name].to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SimilarityTrainConfig":
        values = known_fields(cls, data, "similarity training config")
        for name, kind in (("network", SimilarityNetConfig), ("target_range", PoseRange),
                           ("offset_range", PoseRange), ("augmentation", Augmentation)):
            if name in values and isinstance(values[name], dict):
                values[name] = kind.from_dict(values[name])
        return cls(**values)


# --------------------------------------------------------------------------- the loss


def similarity_gradients(net: torch.nn.Module, embedding: str, groups: int, targets: torch.Tensor,
                         drrs: torch.Tensor, jacobians: torch.Tensor,
                         create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(s (b,), d s / d xi (b, 6)) for target inputs (b, 1, S, S), DRRs (b, h, w) and their Jacobians (b, h, w, 6).

    One forward of the (siamese) ``net`` on targets and DRRs together; the
    DRR gradient by autograd (``create_graph`` for training), chained with
    the Jacobian. ``s`` is the learned distance per group (module docstring).
    """
    size = targets.shape[-1]
    drr = drrs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        inputs = torch.cat([targets, network_input(drr, size, differentiable=True)])
        e = so4.embedding(net(inputs), embedding)
        e_target, e_drr = e[:targets.shape[0]], e[targets.shape[0]:]
        s = so4.distance_sq(e_drr, e_target, embedding) / groups
        (image_gradient,) = torch.autograd.grad(s.sum(), drr, create_graph=create_graph)
    return s, torch.einsum("bhw,bhwp->bp", image_gradient, jacobians)


def _cosines(g: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.cosine_similarity(g[:, :3], target[:, :3], dim=1, eps=1e-12),
            F.cosine_similarity(g[:, 3:], target[:, 3:], dim=1, eps=1e-12))


def similarity_loss(net: torch.nn.Module, config: SimilarityTrainConfig, targets: torch.Tensor,
                    pairs: Pairs) -> tuple[torch.Tensor, dict]:
    """(loss, its parts as floats) for a batch: target inputs (b, 1, S, S) and their `Pairs` (module docstring)."""
    s, g = similarity_gradients(net, config.network.embedding, config.network.groups, targets, pairs.drrs,
                                pairs.jacobians, create_graph=True)
    cos_r, cos_t = _cosines(g, pairs.gradients)
    direction = ((1 - cos_r) + (1 - cos_t)).mean() / 2
    distance = ((s + 1e-12).sqrt() - pairs.distances).square().mean()
    loss = config.direction_weight * direction + config.distance_weight * distance
    return loss, {"direction_loss": float(direction.detach()), "distance_loss": float(distance.detach()),
                  "cosine": float(((cos_r + cos_t) / 2).mean().detach())}


def _zncc_gradients(pairs: Pairs) -> torch.Tensor:
    """d (1 - ZNCC(x, t)) / d xi (n, 6) through the pairs' Jacobians: the image similarity's own direction."""
    from ..similarity.ncc import zncc

    drr = pairs.drrs.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        value = 1 - zncc(drr, pairs.targets.to(torch.float64))
        (gradient,) = torch.autograd.grad(value.sum(), drr)
    return torch.einsum("bhw,bhwp->bp", gradient, pairs.jacobians.to(torch.float64)).to(torch.float32)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / ((a.square().sum() * b.square().sum()).sqrt() + 1e-30))


def validate_similarity(model: SimilarityNet, pairs: Pairs, batch_size: int = 32) -> dict:
    """Cosines of the learned and ZNCC gradients with the geodesic one on clean ``pairs`` (module docstring)."""
    was_training = model.training
    model.eval()
    size, config = model.config.image_size, model.config
    cos_r, cos_t, s = [], [], []
    try:
        for start in range(0, len(pairs), batch_size):
            part = pairs.select(torch.arange(start, min(start + batch_size, len(pairs))))
            si, g = similarity_gradients(model, config.embedding, config.groups, network_input(part.targets, size),
                                         part.drrs, part.jacobians, create_graph=False)
            r, t = _cosines(g.detach(), part.gradients)
            cos_r.append(r)
            cos_t.append(t)
            s.append(si.detach())
    finally:
        model.train(was_training)
    cos_r, cos_t, s = torch.cat(cos_r), torch.cat(cos_t), torch.cat(s)
    base_r, base_t = _cosines(_zncc_gradients(pairs), pairs.gradients)
    return {"cosine": float(((cos_r + cos_t) / 2).mean()), "cosine_rotation": float(cos_r.mean()),
            "cosine_translation": float(cos_t.mean()), "baseline_cosine": float(((base_r + base_t) / 2).mean()),
            "distance_corr": _pearson(s.sqrt(), pairs.distances), "pairs": len(pairs)}


# --------------------------------------------------------------------------- the run


def training_volumes(volume, config: SimilarityTrainConfig) -> list:
    """The CTs a run trains on: ``[volume]`` (patient-specific) or the config's seeded phantoms (agnostic)."""
    if not config.agnostic:
        if volume is None:
            raise InputError("a patient-specific similarity needs the patient's CT (or phantoms > 0 for a "
                             "patient-agnostic one)")
        return [volume]
    from ..volume.phantoms import varied_chest_phantom

    return [varied_chest_phantom(config.seed * PHANTOM_SEED_STRIDE + i + 1) for i in range(config.phantoms)]


class _SimilarityRun(TrainingLoop):
    """The loop of `loop.TrainingLoop` with the similarity's model, pairs, loss and validation."""

    metric_key, metric_label = "cosine", "val cosine"

    def _build_model(self, reference_pose) -> None:
        config = self.config
        self.volumes = training_volumes(self.volume, config)
        self.source = PairSource(self.volumes, self.detector, reference_pose, target_range=config.target_range,
                                 offset_range=config.offset_range, image_size=config.network.image_size,
                                 renderer=config.renderer, device=self.device,
                                 source_to_isocenter_mm=config.source_to_isocenter_mm)
        self.reference_pose, self.center = self.source.reference_pose, self.source.centers[0]
        self.model = SimilarityNet(config.network).to(self.device)
        self.volume_fingerprint = (ckpt.AGNOSTIC_FINGERPRINT if config.agnostic
                                   else ckpt.fingerprint_volume(self.volume))

    def _build_data(self, rank_seed: int) -> None:
        config = self.config
        share = self.context.share(config.pool_pairs)
        self.pool = PairPool(self.source, share, stages=min(config.stages, share), seed=rank_seed,
                             augmentation=config.augmentation)
        if self.main:
            self.val_pairs = validation_pairs(self.source, config.validation_pairs, config.seed)

    def _read(self, path: Path) -> dict:
        return ckpt.read_checkpoint(path, ckpt.SIMILARITY_FORMAT)

    def _check_resume(self, data: dict, path: Path) -> None:
        if not self.config.agnostic:
            ckpt.check_volume(data, self.volume, path)
        ckpt.check_detector(data, self.detector, path)
        if not torch.allclose(torch.as_tensor(data["reference_pose"], dtype=torch.float64), self.reference_pose,
                              atol=1e-6):
            raise InputError(f"cannot resume from {path}: it was trained about another reference pose; give the "
                             "same --reference-pose (and --source-to-isocenter), or start a new run")

    def _checkpoint_fields(self) -> dict:
        return dict(reference_pose=self.reference_pose, center=self.center, volume=None, detector=self.detector,
                    volume_fingerprint=self.volume_fingerprint, format=ckpt.SIMILARITY_FORMAT)

    def _start_fields(self) -> dict:
        return {"pool_pairs": self.config.pool_pairs, "kind": "similarity",
                "embedding": self.config.network.embedding, "phantoms": self.config.phantoms}

    def _metric(self) -> dict:
        return {"stage": self.pool.stage, "val_cosine": self.validation.get("cosine")}

    def _run_validation(self) -> dict:
        return validate_similarity(unwrap(self.net), self.val_pairs)

    def _train_step(self, budget) -> dict:
        from .schedule import lr_factor

        config = self.config
        pairs, targets = self.pool.sample(config.batch_size, self.generator)
        lr = config.lr * lr_factor(budget.lr_progress(self.step), config.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        loss, parts = similarity_loss(self.net, config, targets.to(self.device), pairs)
        if not bool(torch.isfinite(loss)):
            raise InputError(f"training diverged: the loss is not finite at step {self.step + 1}; lower the learning "
                             f"rate (now {config.lr:g}) or check the CT")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "lr": lr, **parts}


def train_similarity(volume, detector: Detector, config: SimilarityTrainConfig, *, reference_pose=None,
                     checkpoint_path: str | Path | None = None, resume: bool = False,
                     progress: Callable[[dict], None] | None = None, bar: bool = True) -> TrainResult:
    """Train a learned similarity for ``volume`` (None with ``config.phantoms > 0``) seen by ``detector``.

    ``reference_pose``: camera_from_world (4, 4) the target poses are drawn
    about (None: each CT's AP view). Checkpoints, resume, progress and the
    bar as for `trainer.train`; the result's ``validation`` holds "cosine" etc.
    """
    if not isinstance(config, SimilarityTrainConfig):
        raise InputError(f"config must be a SimilarityTrainConfig, got {type(config).__name__}")
    return run_training(_SimilarityRun, volume, detector, reference_pose, config, checkpoint_path, resume, progress,
                        bar)
