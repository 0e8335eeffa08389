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
    """Outcome of one registration; ``pose`` is camera_from_world (4, 4) float64."""

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

    def to_dict(self) -> dict:
        """JSON-ready summary (the trace included)."""
        return {
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
