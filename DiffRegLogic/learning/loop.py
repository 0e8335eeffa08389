"""The training loop the pose network and the learned similarity share: budget, validation, checkpoints, resume.

`TrainingLoop` runs one training: it seeds the network initialisation and
the batch generator (per rank under torchrun, `distributed`), wraps the
model for DistributedDataParallel, steps AdamW within a step or time budget
(`schedule.Budget`), grows the pool as training progresses, validates every
``validate_every`` seconds and at the end, writes checkpoints every
``checkpoint_every`` seconds, at the end and on KeyboardInterrupt (never
over an earlier file before this session's first step), emits progress
records (`progress`) and a tqdm bar, and resumes a saved run exactly (the
generators' states are in the file). What differs between the models is in
a subclass's hooks: `trainer._TrainingRun` (the pose network) and
`similarity_trainer._SimilarityRun` (the learned similarity).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..devices import resolve_device
from ..errors import InputError
from ..geometry.detector import Detector
from . import checkpoint as ckpt
from .distributed import DistributedContext, unwrap
from .schedule import Budget, config_differences

RESUME_FREE_KEYS = ("device", "validate_every", "checkpoint_every", "log_every")
"""Config keys a resumed run may change (they do not change the weights it reaches)."""


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained `PoseNet` (eval mode, on the training device; not wrapped in DDP).
        history: the run's progress and validation records (dicts with "event").
        validation: the final validation dict (`validate`; {} on ranks other than 0).
        step, elapsed_s: optimiser steps and training time (s, resumed sessions included).
        checkpoint_path: where the model file was written (None without one).
        config: the run's config (`TrainConfig` or `SimilarityTrainConfig`).
    """

    model: torch.nn.Module
    history: list
    validation: dict
    step: int
    elapsed_s: float
    checkpoint_path: Path | None
    config: object


class TrainingLoop:
    """One training run (module docstring); a subclass supplies the model, the data and the step (the hooks)."""

    metric_key, metric_label = "mtre_mm_median", "val mTRE"
    """The validation field that says how good the model is, and its label on the bar."""

    # ---- hooks

    def _build_model(self, reference_pose) -> None:
        """Set ``source``, ``model``, ``reference_pose``, ``center`` and ``volume_fingerprint``."""
        raise NotImplementedError

    def _build_data(self, rank_seed: int) -> None:
        """Set ``pool`` (with ``update(progress)`` and ``stage``) and the validation data (rank 0)."""
        raise NotImplementedError

    def _read(self, path: Path) -> dict:
        """The checkpoint dict of ``path`` (checked for this kind of model)."""
        raise NotImplementedError

    def _check_resume(self, data: dict, path: Path) -> None:
        """Refuse to resume a checkpoint of another CT, detector or reference (InputError)."""
        raise NotImplementedError

    def _checkpoint_fields(self) -> dict:
        """What the model file holds besides the weights and the loop's state."""
        raise NotImplementedError

    def _run_validation(self) -> dict:
        raise NotImplementedError

    def _start_fields(self) -> dict:
        return {}

    def _metric(self) -> dict:
        """The fields of a progress record that say how good the model is now."""
        return {}

    def _train_step(self, budget: Budget) -> dict:
        """One optimiser step; returns its losses (floats) and ``lr``."""
        raise NotImplementedError

    def __init__(self, volume, detector, reference_pose, config, context, device, path, resume, progress, bar):
        self.volume, self.detector, self.config, self.context, self.device = volume, detector, config, context, device
        self.path, self.callback = path, progress
        self.main = context.is_main
        torch.manual_seed(config.seed)  # network initialisation: the same on every rank
        self._build_model(reference_pose)
        self.step, self.elapsed, self.history, self.validation = 0, 0.0, [], {}
        rank_seed = context.seed(config.seed)
        self.generator = torch.Generator().manual_seed(rank_seed)  # batch draws and augmentation
        torch.manual_seed(rank_seed + 1)  # dropout: its own stream per rank
        saved = self._load(self.path) if resume else None
        self.net = context.wrap(self.model, device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if saved is not None:
            self._restore(saved)
        self._build_data(rank_seed)
        self.bar_enabled = bar and self.main

    # ---- checkpoints

    def _load(self, path: Path) -> dict:
        data = self._read(path)
        diff = config_differences(data["config"], self.config.to_dict(), ignore=RESUME_FREE_KEYS)
        if diff:
            raise InputError(f"cannot resume from {path}: its training config differs: {'; '.join(diff)}; resume with "
                             "the same settings, or start a new run (another --out)")
        self._check_resume(data, path)
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
                             validation=self.validation, history=self.history,
                             optimizer=self.optimizer.state_dict(), step=self.step, elapsed_s=self.elapsed,
                             complete=complete, world_size=self.context.world_size,
                             generator_states=[g for g, _ in states], rng_state=torch.get_rng_state(),
                             rng_states=[r for _, r in states], cuda_rng_state=cuda, **self._checkpoint_fields())
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
            self.validation = self._run_validation()
            self._emit("validation", step=self.step, elapsed_s=self.elapsed, **self.validation)
        self.context.barrier()

    def _metric_text(self) -> str:
        value = self.validation.get(self.metric_key)
        unit = " mm" if self.metric_key.endswith("_mm_median") else ""
        return f"{self.metric_label} {'-' if value is None else f'{value:.3g}{unit}'}"

    # ---- the loop

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
                   resumed_step=self.step, **self._start_fields())
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
                               **self._metric())
                if bar is not None:
                    bar.update((self.step if config.steps else int(elapsed)) - bar.n)
                    bar.set_postfix_str(f"loss {losses['loss']:.3g}, {self._metric_text()}", refresh=False)
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
                   **{self.metric_key: self.validation.get(self.metric_key)},
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


def run_training(run_class: type, volume, detector: Detector, reference_pose, config, checkpoint_path, resume: bool,
                 progress: Callable[[dict], None] | None, bar: bool) -> TrainResult:
    """One run of ``run_class`` (a `TrainingLoop`) in the process group torchrun describes (or alone)."""
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    if resume and checkpoint_path is None:
        raise InputError("resume=True needs the checkpoint_path of the run to continue")
    context = DistributedContext.from_env(resolve_device(config.device))
    device = context.device(resolve_device(config.device))
    context.init()
    try:
        return run_class(volume, detector, reference_pose, config, context, device,
                         None if checkpoint_path is None else Path(checkpoint_path), resume, progress, bar).run()
    finally:
        context.destroy()
