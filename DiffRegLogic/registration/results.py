"""What a registration reports: `Progress` after every iteration, `RegistrationResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Progress:
    """What the callback sees after each iteration."""

    level: int
    n_levels: int
    iteration: int
    total_iterations: int
    similarity: float  # best similarity of the current level so far (best start)
    current_similarity: float
    elapsed: float
    pose: torch.Tensor | None = None  # camera_from_world (4, 4) float64 of that best similarity (CPU)


@dataclass
class RegistrationResult:
    """Outcome of one registration; ``pose`` is camera_from_world (4, 4) float64 (of view 1 with several views).

    Several views (`DiffRegLogic.registration.views`): ``view_poses`` (V, 4,
    4) float64 is each view's camera_from_world (``from_first @ pose``),
    ``view_similarities`` the V similarities at the finest level whose mean
    is ``similarity``. ``search`` is what a wide search reported
    (``options.search == "wide"``; it has "candidates"), else None.
    """

    pose: torch.Tensor
    initial_pose: torch.Tensor
    similarity: float
    initial_similarity: float
    iterations: int
    evaluations: int
    seconds: float
    converged: bool
    stop_reason: str
    cancelled: bool = False
    iterations_per_level: list[int] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    view_poses: torch.Tensor | None = None
    view_similarities: list[float] | None = None
    search: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (the trace included; view poses and the search when there are any)."""
        out = {
            "camera_from_world": self.pose.tolist(),
            "initial_camera_from_world": self.initial_pose.tolist(),
            "similarity": self.similarity,
            "initial_similarity": self.initial_similarity,
            "iterations": self.iterations,
            "iterations_per_level": self.iterations_per_level,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "cancelled": self.cancelled,
            "options": self.options,
            "trace": self.trace,
        }
        if self.view_poses is not None:
            out["view_poses"] = self.view_poses.tolist()
            out["view_similarities"] = list(self.view_similarities or [])
        if self.search is not None:
            out["search"] = _json_ready(self.search)
        return out


def _json_ready(value):
    """Tensors and numpy arrays of a report as lists, numpy scalars as numbers (dicts and lists walked)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
