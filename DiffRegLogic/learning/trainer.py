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

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import evaluation
from ..devices import resolve_device
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import motion_about_center
from ..geometry.rigid import so3_exp
from ..volume.ct import Volume
from . import checkpoint as ckpt
from .data import DRRSource, TrainingPool, validation_set
from .distributed import DistributedContext, unwrap
from .losses import pose_loss, sobel_magnitude, structure_loss
from .networks import PoseNet
from .schedule import Budget, TrainConfig, config_differences, lr_factor

__all__ = ["TrainConfig", "TrainResult", "train", "validate"]
RESUME_FREE_KEYS = ("device", "validate_every", "checkpoint_every", "log_every")
"""Config keys a resumed run may change (they do not change the weights it reaches)."""


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


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained `PoseNet` (eval mode, on the training device; not wrapped in DDP).
        history: the run's progress and validation records (dicts with "event").
        validation: the final validation dict (`validate`; {} on ranks other than 0).
        step, elapsed_s: optimiser steps and training time (s, resumed sessions included).
        checkpoint_path: where the model file was written (None without one).
        config: the `TrainConfig`.
    """

    model: PoseNet
    history: list
    validation: dict
    step: int
    elapsed_s: float
    checkpoint_path: Path | None
    config: TrainConfig


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
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    if resume and checkpoint_path is None:
        raise InputError("resume=True needs the checkpoint_path of the run to continue")
    context = DistributedContext.from_env(resolve_device(config.device))
    device = context.device(resolve_device(config.device))
    context.init()
    try:
        return _TrainingRun(volume, detector, reference_pose, config, context, device,
                           None if checkpoint_path is None else Path(checkpoint_path), resume, progress, bar).run()
    finally:
        context.destroy()


class _TrainingRun:
    """One call of `train` (split out so that the loop reads top to bottom)."""

    def __init__(self, volume, detector, reference_pose, config, context, device, path, resume, progress, bar):
        self.volume, self.detector, self.config, self.context, self.device = volume, detector, config, context, device
        self.path, self.callback = path, progress
        self.main = context.is_main
        torch.manual_seed(config.seed)  # network initialisation: the same on every rank
        self.source = DRRSource(volume, detector, reference_pose, image_size=config.network.image_size,
                                renderer=config.renderer, device=device)
        self.reference_pose, self.center = self.source.reference_pose, self.source.center
        self.model = PoseNet(config.network).to(device)
        self.step, self.elapsed, self.history, self.validation = 0, 0.0, [], {}
        rank_seed = context.seed(config.seed)
        self.generator = torch.Generator().manual_seed(rank_seed)  # batch draws and augmentation
        torch.manual_seed(rank_seed + 1)  # dropout: its own stream per rank
        self.volume_fingerprint = ckpt.fingerprint_volume(volume)
        saved = self._load(self.path) if resume else None
        self.net = context.wrap(self.model, device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if saved is not None:
            self._restore(saved)
        share = context.share(config.pool_images)
        self.pool = TrainingPool(self.source, config.pose_range, share,
                                 incremental=config.incremental, stages=min(config.stages, share),
                                 start_fraction=config.start_fraction, augmentation=config.augmentation,
                                 seed=rank_seed)
        if self.main:
            self.val_images, _, self.val_poses = validation_set(self.source, config.pose_range,
                                                                config.validation_images, config.seed)
            self.points = evaluation.target_points(volume, n=config.target_points, seed=config.seed)
        self.bar_enabled = bar and self.main

    # ---- checkpoints

    def _load(self, path: Path) -> dict:
        data = ckpt.read_checkpoint(path)
        diff = config_differences(data["config"], self.config.to_dict(), ignore=RESUME_FREE_KEYS)
        if diff:
            raise InputError(f"cannot resume from {path}: its training config differs: {'; '.join(diff)}; resume with "
                             "the same settings, or start a new run (another --out)")
        ckpt.check_volume(data, self.volume, path)
        ckpt.check_detector(data, self.detector, path)
        if not torch.allclose(torch.as_tensor(data["reference_pose"], dtype=torch.float64), self.reference_pose,
                              atol=1e-6):
            raise InputError(f"cannot resume from {path}: it was trained about another reference pose; give the "
                             "same --reference-pose, or start a new run")
        self.model.load_state_dict(data["weights"])
        return data

    def _restore(self, data: dict) -> None:
        self.optimizer.load_state_dict(data["optimizer"])
        self.step, self.elapsed = int(data["step"]), float(data["elapsed_s"])
        self.history, self.validation = list(data["history"]), dict(data["validation"])
        states, world = data.get("generator_states") or [], self.context.world_size
        if int(data.get("world_size", 1)) == world and len(states) == world:
            self.generator.set_state(states[self.context.rank])
            dropout = data.get("rng_states") or []
            if len(dropout) == world:
                torch.set_rng_state(dropout[self.context.rank])
            elif data.get("rng_state") is not None and world == 1:
                torch.set_rng_state(data["rng_state"])
            if data.get("cuda_rng_state") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(data["cuda_rng_state"], self.device)
        else:  # another number of processes: fresh draws, fixed by (seed, rank, step)
            self.generator.manual_seed(self.context.seed(self.config.seed) + 7919 * self.step)

    def _save(self, complete: bool, states: list | None = None) -> None:
        """Write the model file (rank 0); ``states``: every rank's (batch generator, dropout generator) states."""
        if self.path is None:
            return
        if states is None:  # this rank's only (an interrupted distributed run resumes with fresh draws)
            states = [(self.generator.get_state(), torch.get_rng_state())]
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        ckpt.save_checkpoint(self.path, config=self.config, weights=unwrap(self.net).state_dict(),
                             reference_pose=self.reference_pose, center=self.center, volume=self.volume,
                             detector=self.detector, validation=self.validation, history=self.history,
                             optimizer=self.optimizer.state_dict(), step=self.step, elapsed_s=self.elapsed,
                             complete=complete, world_size=self.context.world_size,
                             generator_states=[g for g, _ in states], rng_state=torch.get_rng_state(),
                             rng_states=[r for _, r in states], cuda_rng_state=cuda,
                             volume_fingerprint=self.volume_fingerprint)
        self._emit("checkpoint", step=self.step, path=str(self.path), complete=complete)

    def _checkpoint(self, complete: bool) -> None:
        """Collective: every rank hands its generator state to rank 0, which writes the file."""
        states = self.context.gather_objects((self.generator.get_state(), torch.get_rng_state()))
        if self.main:
            self._save(complete, states)
        self.context.barrier()

    # ---- reporting

    def _emit(self, event: str, **fields) -> None:
        if not self.main:
            return
        record = {"event": event, **fields}
        if event in ("progress", "validation"):
            self.history.append(dict(record))
        if self.callback is not None:
            self.callback(record)

    def _validate(self) -> None:
        if self.main:
            self.validation = validate(unwrap(self.net), self.val_images, self.val_poses, self.reference_pose,
                                       self.center, self.points)
            self._emit("validation", step=self.step, elapsed_s=self.elapsed, **self.validation)
        self.context.barrier()

    # ---- the loop

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

    def _elapsed(self, budget: Budget) -> float:
        """Training time (s); under DDP rank 0's, so that every rank takes the same decisions."""
        budget.sync(None)
        value = self.context.broadcast_float(budget.elapsed)
        budget.sync(value)
        self.elapsed = value
        return value

    def run(self) -> TrainResult:
        config, context = self.config, self.context
        budget = Budget(steps=config.steps, seconds=config.budget_seconds, start_step=self.step,
                        start_elapsed=self.elapsed)
        self._emit("start", steps=config.steps, minutes=config.minutes, image_size=config.network.image_size,
                   batch_size=config.batch_size, world_size=context.world_size, device=str(self.device),
                   resumed_step=self.step, pool_images=config.pool_images)
        bar = self._bar(budget)
        resumed_step = self.step
        last_validation = last_checkpoint = self._elapsed(budget)
        window_step, window_time = self.step, last_validation
        completed = (self.generator.get_state(), torch.get_rng_state())  # the generators after the last full step
        validated_at = None
        try:
            while not budget.done(self.step) or self.step == 0:  # a time budget still takes one step
                self.pool.update(budget.progress(self.step))
                losses = self._train_step(budget)
                self.step += 1
                completed = (self.generator.get_state(), torch.get_rng_state())
                elapsed = self._elapsed(budget)
                if config.validate_every > 0 and elapsed - last_validation >= config.validate_every:
                    self._validate()
                    last_validation, validated_at = elapsed, self.step
                last = budget.done(self.step)
                if self.main and (self.step % config.log_every == 0 or last):
                    rate = (self.step - window_step) * config.batch_size * context.world_size / max(
                        elapsed - window_time, 1e-9)
                    window_step, window_time = self.step, elapsed
                    self._emit("progress", step=self.step, steps=config.steps, fraction=budget.progress(self.step),
                               elapsed_s=elapsed, eta_s=budget.eta(self.step), **losses, images_per_s=rate,
                               stage=self.pool.stage, val_mtre_mm=self.validation.get("mtre_mm_median"))
                if bar is not None:
                    bar.update((self.step if config.steps else int(elapsed)) - bar.n)
                    mtre = self.validation.get("mtre_mm_median")
                    bar.set_postfix_str(f"loss {losses['loss']:.3g}, val mTRE "
                                        f"{'-' if mtre is None else f'{mtre:.1f} mm'}", refresh=False)
                if (self.path is not None and config.checkpoint_every > 0 and not last
                        and elapsed - last_checkpoint >= config.checkpoint_every):
                    self._checkpoint(complete=False)
                    last_checkpoint = elapsed
        except KeyboardInterrupt:
            # the progress so far, at the last completed step; an interrupt before this session's first step leaves
            # the file as it was (an earlier model or checkpoint there is not replaced by untrained weights)
            if self.main and self.path is not None and self.step > resumed_step:
                self.generator.set_state(completed[0])
                torch.set_rng_state(completed[1])
                self._save(complete=False)
            raise
        finally:
            if bar is not None:
                bar.close()
        if validated_at != self.step:
            self._validate()
        if self.path is not None:
            self._checkpoint(complete=True)
        self._emit("done", step=self.step, elapsed_s=self.elapsed,
                   mtre_mm_median=self.validation.get("mtre_mm_median"),
                   path=None if self.path is None else str(self.path))
        model = unwrap(self.net).eval()
        return TrainResult(model=model, history=self.history, validation=self.validation, step=self.step,
                           elapsed_s=self.elapsed, checkpoint_path=self.path, config=config)

    def _bar(self, budget: Budget):
        if not self.bar_enabled:
            return None
        from tqdm import tqdm

        total = self.config.steps if self.config.steps else int(math.ceil(budget.seconds))
        return tqdm(total=total, initial=self.step if self.config.steps else int(budget.elapsed), file=sys.stderr,
                    unit="step" if self.config.steps else "s", desc="training", dynamic_ncols=True, leave=True)
