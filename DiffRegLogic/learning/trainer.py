"""Training the patient-specific pose network on DRRs of the patient's own CT: config, loop, validation, resume.

`train` renders a pool of DRRs at seeded random motions about the CT centre
(`data.TrainingPool`, growing in stages when ``incremental``), draws
augmented batches from it, and fits `networks.PoseNet` with AdamW under a
warm-up + cosine schedule (`schedule`) within a step or time budget.

Loss (per batch): ``pose_loss / pose_loss_scale + decoder_weight * structure_loss``.
The pose loss is in degrees + mm (`losses.pose_loss`: "poster" or
"geodesic"); dividing it by ``pose_loss_scale`` (default 10) makes a 10 deg
/ 10 mm error weigh one unit, the size of the structure loss
(L1 + 1 - SSIM of the decoder's Sobel-magnitude reconstruction, in [0, 2]),
so with ``decoder_weight = 1`` neither term swamps the other early on and
the pose term dominates once the structure is learned.

Validation (rank 0, eval mode, no grad) predicts the fixed validation set
(`data.validation_set`, seeded apart from the training draws) and reports
the mTRE (`evaluation.mtre` over `evaluation.target_points`), rotation and
translation errors against the true poses, and the mTRE of the no-learning
baseline (predicting the reference pose). It runs every ``validate_every``
seconds of training and at the end.

Determinism: a run is fixed by its config (seed): torch's global generator
(network initialisation, dropout) and a `torch.Generator` for the batch
draws are seeded; the pool re-renders the same images from its per-stage
seeds. A checkpoint holds the weights, optimiser state, step, elapsed time,
both generators' states and the history, so a run of a step budget that is
interrupted and resumed (``resume=True``) ends at the same weights as one
that is not. Under torchrun see `distributed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .. import evaluation
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import motion_about_center
from ..geometry.rigid import so3_exp
from ..volume.ct import Volume
from . import checkpoint as ckpt
from .data import DRRSource, TrainingPool, validation_set
from .distributed import unwrap
from .losses import pose_loss, sobel_magnitude, structure_loss
from .networks import PoseNet
from .loop import TrainingLoop, TrainResult, run_training
from .schedule import Budget, TrainConfig, lr_factor

__all__ = ["TrainConfig", "TrainResult", "train", "validate"]


# --------------------------------------------------------------------------- validation


def validate(model: torch.nn.Module, images: torch.Tensor, poses: torch.Tensor, reference_pose: torch.Tensor,
             center: torch.Tensor, points: torch.Tensor, batch: int = 64) -> dict:
    """Errors of the network's poses on a validation set, in eval mode without gradients.

    Args:
        images: (n, 1, S, S) float32 network inputs; poses: (n, 4, 4) true camera_from_world.
        reference_pose (4, 4), center (3,) (mm), points (N, 3) world mm for the mTRE.

    Returns floats: ``mtre_mm_median``, ``mtre_mm_mean``, ``mtre_mm_p90``,
    ``rotation_deg_median``/``_mean``, ``translation_mm_median``/``_mean``,
    ``success_10mm`` (fraction with mTRE < 10 mm), ``baseline_mtre_mm_median``
    (mTRE of predicting the reference pose), ``n``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rotations, translations = [], []
    with torch.no_grad():
        for chunk in torch.split(images, batch):
            prediction = model(chunk.to(device))
            rotations.append(prediction.rotation.detach().to("cpu", torch.float64))
            translations.append(prediction.translation_mm.detach().to("cpu", torch.float64))
    model.train(was_training)
    reference = torch.as_tensor(reference_pose, dtype=torch.float64).cpu()
    center = torch.as_tensor(center, dtype=torch.float64).cpu()
    truth = torch.as_tensor(poses, dtype=torch.float64).cpu()
    points = torch.as_tensor(points, dtype=torch.float64).cpu()
    estimate = reference @ motion_about_center(torch.cat(rotations), torch.cat(translations), center)
    mtre = evaluation.mtre(estimate, truth, points)
    errors = evaluation.pose_errors(estimate, truth, center)
    baseline = evaluation.mtre(reference.expand_as(truth), truth, points)
    return {
        "mtre_mm_median": float(mtre.median()), "mtre_mm_mean": float(mtre.mean()),
        "mtre_mm_p90": float(torch.quantile(mtre, 0.9)),
        "rotation_deg_median": float(errors["rotation_deg"].median()),
        "rotation_deg_mean": float(errors["rotation_deg"].mean()),
        "translation_mm_median": float(errors["translation_mm"].median()),
        "translation_mm_mean": float(errors["translation_mm"].mean()),
        "success_10mm": evaluation.success_rate(mtre, 10.0),
        "baseline_mtre_mm_median": float(baseline.median()), "n": int(truth.shape[0]),
    }


# --------------------------------------------------------------------------- training


def training_loss(prediction, images: torch.Tensor, true_rotation: torch.Tensor, true_translation: torch.Tensor,
                  config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, pose loss, structure loss or None) of one batch: pose loss / ``pose_loss_scale`` plus
    ``decoder_weight`` x the structure loss of the reconstruction against the images' Sobel magnitude.

    ``prediction``: the `PosePrediction` of ``images`` (B, 1, S, S); true rotations (B, 3, 3), translations (B, 3) mm.
    """
    pose = pose_loss(prediction.rotation, prediction.translation_mm, true_rotation, true_translation,
                     kind=config.pose_loss, length_mm=config.geodesic_length_mm)
    loss = pose / config.pose_loss_scale
    structure = None
    if prediction.reconstruction is not None:
        structure = structure_loss(prediction.reconstruction, sobel_magnitude(images))
        loss = loss + config.decoder_weight * structure
    return loss, pose, structure


def train(volume: Volume, detector: Detector, reference_pose: torch.Tensor, config: TrainConfig, *,
          checkpoint_path: str | Path | None = None, resume: bool = False,
          progress: Callable[[dict], None] | None = None, bar: bool = True) -> TrainResult:
    """Train a pose network for ``volume`` seen by ``detector`` about ``reference_pose`` ((4, 4) camera_from_world).

    ``checkpoint_path``: the model file, written every ``config.checkpoint_every``
    seconds, at the end, and on KeyboardInterrupt (then re-raised); atomic.
    ``resume``: continue the run saved there (refuses another config, CT,
    detector or reference pose, naming what differs). ``progress``: called with
    each record (see `progress`); ``bar``: a tqdm bar on stderr. Under torchrun
    (WORLD_SIZE > 1) the ranks train one DistributedDataParallel model.
    """
    if not isinstance(config, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    return run_training(_TrainingRun, volume, detector, reference_pose, config, checkpoint_path, resume, progress, bar)


class _TrainingRun(TrainingLoop):
    """One call of `train`: the pose network's hooks of the shared loop (`loop.TrainingLoop`)."""

    def _build_model(self, reference_pose) -> None:
        config = self.config
        self.source = DRRSource(self.volume, self.detector, reference_pose, image_size=config.network.image_size,
                                renderer=config.renderer, device=self.device)
        self.reference_pose, self.center = self.source.reference_pose, self.source.center
        self.model = PoseNet(config.network).to(self.device)
        self.volume_fingerprint = ckpt.fingerprint_volume(self.volume)

    def _build_data(self, rank_seed: int) -> None:
        config = self.config
        share = self.context.share(config.pool_images)
        self.pool = TrainingPool(self.source, config.pose_range, share,
                                 incremental=config.incremental, stages=min(config.stages, share),
                                 start_fraction=config.start_fraction, augmentation=config.augmentation,
                                 seed=rank_seed)
        if self.main:
            self.val_images, _, self.val_poses = validation_set(self.source, config.pose_range,
                                                                config.validation_images, config.seed)
            self.points = evaluation.target_points(self.volume, n=config.target_points, seed=config.seed)

    def _read(self, path: Path) -> dict:
        return ckpt.read_checkpoint(path)

    def _check_resume(self, data: dict, path: Path) -> None:
        ckpt.check_volume(data, self.volume, path)
        ckpt.check_detector(data, self.detector, path)
        if not torch.allclose(torch.as_tensor(data["reference_pose"], dtype=torch.float64), self.reference_pose,
                              atol=1e-6):
            raise InputError(f"cannot resume from {path}: it was trained about another reference pose; give the "
                             "same --reference-pose, or start a new run")

    def _checkpoint_fields(self) -> dict:
        """What the model file holds besides the weights and the loop's state (the model's kind)."""
        return dict(reference_pose=self.reference_pose, center=self.center, volume=self.volume,
                    detector=self.detector, volume_fingerprint=self.volume_fingerprint)

    def _run_validation(self) -> dict:
        return validate(unwrap(self.net), self.val_images, self.val_poses, self.reference_pose, self.center,
                        self.points)

    def _start_fields(self) -> dict:
        return {"pool_images": self.config.pool_images}

    def _metric(self) -> dict:
        """The fields of a progress record that say how good the model is now."""
        return {"stage": self.pool.stage, "val_mtre_mm": self.validation.get("mtre_mm_median")}

    def _train_step(self, budget: Budget) -> dict:
        config = self.config
        images, motions = self.pool.sample(config.batch_size, self.generator)
        images = images.to(self.device)
        true_rotation = so3_exp(motions[:, :3].detach().cpu()).to(self.device, torch.float32)
        true_translation = motions[:, 3:].to(self.device, torch.float32)
        lr = config.lr * lr_factor(budget.lr_progress(self.step), config.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        loss, pose, structure = training_loss(self.net(images), images, true_rotation, true_translation, config)
        if not bool(torch.isfinite(loss)):
            raise InputError(f"training diverged: the loss is not finite at step {self.step + 1}; lower the learning "
                             f"rate (now {config.lr:g}) or check the CT")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "pose_loss": float(pose.detach()), "lr": lr,
                "structure_loss": None if structure is None else float(structure.detach())}
