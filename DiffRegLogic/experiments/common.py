"""Checks and constants shared by the experiments."""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import geometry
from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume

PLOT_SIZE = (640, 360)
"""(width, height) in pixels of one plot panel; `landscape` stacks two panels per similarity."""

N_TARGET_POINTS = 1000
"""CT points of the mTRE in `robustness` and `polychromatic`."""

TEST_SEED_OFFSET = 7_919_003
"""Added to the seed of the pose network's held-out test poses (`ablation`, `network_realism`): disjoint from the
trainer's training and validation streams."""


class ExperimentInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during an experiment, raised after the rows finished so far were written to ``kept``."""

    def __init__(self, kept: Path, signal_number: int = signal.SIGINT):
        super().__init__(f"interrupted; the rows finished so far are in {kept}")
        self.kept = kept
        self.signal = signal_number


@contextlib.contextmanager
def keep_rows_on_interrupt(path: Path, columns: Sequence[str], rows: Callable[[], list]):
    """On KeyboardInterrupt in the block, write ``rows()`` (if any) as CSV to ``path`` and raise `ExperimentInterrupted`.

    ``path`` is a ``*.partial.csv`` name, so that an interrupted run is never
    mistaken for a finished one; without finished rows the interrupt passes
    through and nothing is written.
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        finished = rows()
        if not finished:
            raise
        from .reports import write_csv

        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, columns, finished)
        raise ExperimentInterrupted(path, getattr(exc, "signal", signal.SIGINT)) from exc


def _check_case(volume, xray, detector, true_pose) -> tuple[torch.Tensor, torch.Tensor]:
    """(xray (H, W) on the volume's device and dtype, true pose (4, 4) float64 CPU)."""
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    try:
        xray = torch.as_tensor(xray)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the X-ray must be a 2D image (H, W) as a tensor or array, got {type(xray).__name__}") from exc
    if xray.ndim != 2 or tuple(xray.shape) != detector.shape:
        raise InputError(
            f"the X-ray has shape {tuple(xray.shape)} but the detector is {detector.rows}x{detector.cols}; "
            "give the geometry of this image"
        )
    xray = xray.to(device=volume.mu.device, dtype=volume.mu.dtype)
    if not torch.isfinite(xray).all():
        raise InputError("the X-ray contains NaN or infinite pixels; fix them before running the experiment")
    return xray, _true_pose(true_pose)


def _true_pose(true_pose) -> torch.Tensor:
    """The true pose as one (4, 4) float64 CPU matrix (InputError otherwise)."""
    pose = geometry.check_pose(true_pose, name="true pose").to(torch.float64).cpu()
    if pose.ndim == 3:
        if pose.shape[0] != 1:
            raise InputError(f"the true pose must be one (4, 4) matrix, got {tuple(pose.shape)}")
        pose = pose[0]
    return pose


def _nonnegative(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _names(values, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    try:
        names = tuple(values)
    except TypeError as exc:
        raise InputError(f"{name} must be a sequence of names, got {values!r}") from exc
    if not names:
        raise InputError(f"{name} is empty: give at least one")
    if len(set(names)) != len(names):
        raise InputError(f"{name} lists a name twice: {list(names)}")
    return names


def _thresholds(values) -> list[float]:
    """success_mm as a non-empty list of positive finite mm."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values]
    try:
        items = list(values)
    except TypeError as exc:
        raise InputError(f"success_mm must be a sequence of positive mTRE thresholds (mm), got {values!r}") from exc
    if not items:
        raise InputError("success_mm is empty: give at least one mTRE threshold (mm)")
    out = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise InputError(f"each success_mm threshold must be a positive number of mm, got {t!r}")
        out.append(float(t))
    return out
