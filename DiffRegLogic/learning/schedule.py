"""The plan of a training run: its config (`TrainConfig`), its budget (steps or time) and its learning rate.

`TrainConfig` fixes everything a run does (network, pose range, pool,
augmentation, loss weights, budget, seed) and is stored in the model file;
`train` lives in `DiffRegLogic.learning.trainer`, which re-exports it.

The budget (`Budget`) and the schedule (`lr_factor`) speak in *progress* p
in [0, 1]: the fraction of the budget used, i.e. ``step / steps`` for a
step budget or ``elapsed / budget_seconds`` for a time budget. The
schedule is a factor on the base learning rate:

* warm-up, ``p < w`` (w = ``warmup_fraction``): ``factor = p / w``;
* decay, ``p >= w``: ``factor = final + (1 - final) * (1 + cos(pi * (p - w) / (1 - w))) / 2``,

so the factor rises linearly from 0 to 1 over the first w of the budget and
falls along half a cosine to ``final`` (default 0) at the end. The trainer
evaluates it at the middle of each step (`Budget.lr_progress`), so no step
of a step budget runs at exactly zero learning rate.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable

from ..drr.backends import RENDERERS
from ..errors import InputError
from ..limits import SEED_RANGE
from .configs import known_fields
from .augment import DEFAULT_AUGMENTATION, Augmentation
from .losses import POSE_LOSSES
from .networks import PoseNetConfig
from .poses import PoseRange

__all__ = ["lr_factor", "Budget", "TrainConfig", "config_differences"]


def _fraction(name: str, value: float, upper_open: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not math.isfinite(value) or value < 0 or value > 1 or (upper_open and value >= 1):
        raise InputError(f"{name} must be a number in [0, 1{')' if upper_open else ']'}, got {value!r}")
    return value


def lr_factor(progress: float, warmup_fraction: float = 0.05, final: float = 0.0) -> float:
    """Factor on the base learning rate at ``progress`` in [0, 1] (values outside are clamped); see the module doc."""
    w = _fraction("warmup_fraction", warmup_fraction, upper_open=True)
    final = _fraction("final learning-rate factor", final)
    p = min(max(float(progress), 0.0), 1.0)
    if p < w:
        return p / w
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * (p - w) / (1.0 - w)))


class Budget:
    """A step or time budget: progress, ETA and when to stop.

    Exactly one of ``steps`` (a positive whole number of optimiser steps) and
    ``seconds`` (a positive training time) is given. ``start_step`` and
    ``start_elapsed`` (s) carry a resumed run's count on; ``clock`` (seconds,
    monotonic) is injectable for tests. Elapsed time counts from `start`
    (called by the constructor) plus ``start_elapsed``; `sync` replaces it by
    an agreed value (the ranks of a distributed run share rank 0's).
    """

    def __init__(self, steps: int | None = None, seconds: float | None = None, *, start_step: int = 0,
                 start_elapsed: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if (steps is None) == (seconds is None):
            raise InputError("give exactly one budget: a number of steps or a training time (minutes)")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise InputError(f"the training time must be a number of seconds > 0, got {seconds!r}") from None
            if not math.isfinite(seconds) or seconds <= 0:
                raise InputError(f"the training time must be > 0 and finite, got {seconds!r} s; give --minutes > 0 "
                                 "or a number of steps")
        self.steps, self.seconds = steps, seconds
        self.start_step, self.start_elapsed = int(start_step), float(start_elapsed)
        self._clock = clock
        self._override: float | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the clock of this session (elapsed = start_elapsed)."""
        self._t0 = self._clock()
        self._override = None

    @property
    def elapsed(self) -> float:
        """Training time so far (s), this session plus ``start_elapsed``."""
        if self._override is not None:
            return self._override
        return self.start_elapsed + (self._clock() - self._t0)

    def sync(self, elapsed: float | None) -> None:
        """Use ``elapsed`` (s) as the elapsed time until the next `sync` (None: back to the clock)."""
        self._override = None if elapsed is None else float(elapsed)

    def progress(self, step: int) -> float:
        """Fraction of the budget used after ``step`` completed steps, in [0, 1]."""
        if self.steps is not None:
            return min(1.0, step / self.steps)
        return min(1.0, self.elapsed / self.seconds)

    def lr_progress(self, step: int) -> float:
        """Progress at which step number ``step`` (0-based) takes its learning rate: its middle for a step budget."""
        if self.steps is not None:
            return min(1.0, (step + 0.5) / self.steps)
        return self.progress(step)

    def done(self, step: int) -> bool:
        """True once the budget is used up."""
        if self.steps is not None:
            return step >= self.steps
        return self.elapsed >= self.seconds

    def eta(self, step: int) -> float | None:
        """Seconds left: this session's step rate for a step budget (None before the first step), else the clock."""
        if self.steps is not None:
            done = step - self.start_step
            if done <= 0:
                return None
            session = self.elapsed - self.start_elapsed
            return max(0.0, session / done * (self.steps - step))
        return max(0.0, self.seconds - self.elapsed)


# --------------------------------------------------------------------------- config


def _number(name, value, low=None, high=None, *, integer=False, low_open=False, high_open=False):
    kind = "a whole number" if integer else "a number"
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real)
    if not bad:
        v = float(value)
        bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
               or (high is not None and (v >= high if high_open else v > high)))
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise InputError(f"training {name} must be {kind} {' and '.join(s for s in (lo, hi) if s)}, got {value!r}")
    return int(value) if integer else float(value)


def check_loop_fields(config) -> None:
    """The checks of the fields every training config shares: budget, batch, AdamW and its schedule."""
    if (config.steps is None) == (config.minutes is None):
        raise InputError("give exactly one training budget: steps (a number of optimiser steps) or minutes")
    if config.steps is not None:
        _number("steps", config.steps, 1, integer=True)
    if config.minutes is not None:
        _number("minutes", config.minutes, 0, low_open=True)
    _number("batch_size", config.batch_size, 1, integer=True)
    _number("lr", config.lr, 0, low_open=True)
    _number("weight_decay", config.weight_decay, 0)
    _number("warmup_fraction", config.warmup_fraction, 0, 1, high_open=True)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (and so is stored in the model file).

    Budget: exactly one of ``steps`` (optimiser steps, >= 1) and ``minutes``
    (training time, > 0). ``batch_size`` is per process. ``lr`` is AdamW's
    peak learning rate, reached after ``warmup_fraction`` of the budget, then
    cosine-decayed to 0. Loss weights: see `learning.trainer` (``pose_loss`` kind
    "poster" or "geodesic" with ``geodesic_length_mm``; ``pose_loss_scale``
    deg+mm per unit; ``decoder_weight`` on the structure loss, used only
    when the network has a decoder). Pool: ``pool_images`` DRRs in total
    (over all ranks), in ``stages`` stages from ``start_fraction`` of the
    range when ``incremental``. ``validation_images`` validation DRRs,
    ``target_points`` CT points for their mTRE; ``validate_every`` and
    ``checkpoint_every`` are seconds of training (0: only at the end);
    ``log_every`` steps between progress records. ``device``: "auto",
    "cpu", "cuda" or "cuda:N"; ``renderer``: "siddon" or "trilinear".
    """

    network: PoseNetConfig = field(default_factory=PoseNetConfig)
    pose_range: PoseRange = field(default_factory=PoseRange)
    batch_size: int = 16
    steps: int | None = None
    minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    pose_loss: str = "poster"
    geodesic_length_mm: float = 100.0
    pose_loss_scale: float = 10.0
    decoder_weight: float = 1.0
    incremental: bool = True
    stages: int = 4
    start_fraction: float = 0.5
    pool_images: int = 2048
    augmentation: Augmentation = field(default_factory=lambda: DEFAULT_AUGMENTATION)
    validation_images: int = 64
    target_points: int = 500
    validate_every: float = 60.0
    checkpoint_every: float = 300.0
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    renderer: str = "siddon"

    def __post_init__(self) -> None:
        for name, kind in (("network", PoseNetConfig), ("pose_range", PoseRange), ("augmentation", Augmentation)):
            if not isinstance(getattr(self, name), kind):
                raise InputError(f"training {name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        check_loop_fields(self)
        if self.pose_loss not in POSE_LOSSES:
            raise InputError(f"training pose_loss must be one of {', '.join(POSE_LOSSES)}, got {self.pose_loss!r}")
        _number("geodesic_length_mm", self.geodesic_length_mm, 0, low_open=True)
        _number("pose_loss_scale", self.pose_loss_scale, 0, low_open=True)
        _number("decoder_weight", self.decoder_weight, 0)
        if not isinstance(self.incremental, bool):
            raise InputError(f"training incremental must be true or false, got {self.incremental!r}")
        _number("stages", self.stages, 1, integer=True)
        _number("start_fraction", self.start_fraction, 0, 1, low_open=True)
        _number("pool_images", self.pool_images, 1, integer=True)
        _number("validation_images", self.validation_images, 1, integer=True)
        _number("target_points", self.target_points, 1, integer=True)
        _number("validate_every", self.validate_every, 0)
        _number("checkpoint_every", self.checkpoint_every, 0)
        _number("log_every", self.log_every, 1, integer=True)
        _number("seed", self.seed, *SEED_RANGE, integer=True)
        if not isinstance(self.device, str):
            raise InputError(f"training device must be a string (auto, cpu, cuda, cuda:N), got {self.device!r}")
        if self.renderer not in RENDERERS:
            raise InputError(f"training renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")

    @property
    def budget_seconds(self) -> float | None:
        """The time budget in seconds (None for a step budget)."""
        return None if self.minutes is None else float(self.minutes) * 60.0

    def to_dict(self) -> dict:
        """Plain JSON-able dict (nested configs as their own dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("network", "pose_range", "augmentation"):
            out[name] = out[name].to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys are refused (InputError), missing ones take their defaults."""
        values = known_fields(cls, data, "training config")
        for name, kind in (("network", PoseNetConfig), ("pose_range", PoseRange), ("augmentation", Augmentation)):
            if name in values and isinstance(values[name], dict):
                values[name] = kind.from_dict(values[name])
        return cls(**values)


def config_differences(a: dict, b: dict, prefix: str = "", ignore=()) -> list[str]:
    """Keys (dotted) where two config dicts differ, as "key: a vs b"."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += config_differences(x, y, f"{prefix}{key}.")
        elif (list(x) if isinstance(x, tuple) else x) != (list(y) if isinstance(y, tuple) else y):
            out.append(f"{prefix}{key}: {x!r} (checkpoint) vs {y!r} (now)")
    return out
