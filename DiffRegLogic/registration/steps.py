"""Step rules over batched pose parameters ``x`` (B, P), with a step size per parameter.

The level optimisers of `DiffRegLogic.registration.levels` drive these rules.

The registration parameters are 3 rotations (rad) and 3 translations (mm),
so each optimiser takes a step size per parameter (B, P): one for rotation,
one for translation, and per batch row, so that one registration's schedule
does not affect another's in a batch of starts.

Gradient methods (the four the seed paper compares), with g the gradient of
the loss:

* ``gd``:   x <- x - a g
* ``gdm``:  v <- m v + g;            x <- x - a v      (heavy-ball momentum)
* ``gddm``: v <- m v + (1 - m) g;    x <- x - a v      (damped momentum)
* ``adam``: Kingma & Ba with bias correction; the step is a * m_hat / (sqrt(v_hat) + eps),
  so ``a`` is close to the size of a step in rad or mm.

Levenberg-Marquardt works on a residual vector r (B, M) with Jacobian J
(B, M, P): it solves ``(J^T J + lambda diag(J^T J)) dx = -J^T r`` and adapts
lambda (divided on a step that lowers ||r||^2, multiplied and the step
rejected otherwise).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .optimizers import GRADIENT_OPTIMIZERS


class GradientOptimizer:
    """Base class: holds the per-parameter step sizes ``step_sizes`` (B, P)."""

    name = "gd"

    def __init__(self, step_sizes: torch.Tensor) -> None:
        if step_sizes.ndim != 2:
            raise InputError(f"step sizes must be (B, P), got shape {tuple(step_sizes.shape)}")
        if not (step_sizes > 0).all():
            raise InputError("step sizes must be positive")
        self.step_sizes = step_sizes.clone()

    def direction(self, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return grad

    def step(self, x: torch.Tensor, grad: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """New parameters (B, P) after one step from ``x`` with gradient ``grad`` (B, P).

        Rows where ``active`` (B,) is False are returned unchanged and their state does not advance.
        """
        if active is None:
            active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        update = self.step_sizes * self.direction(grad, active)
        return torch.where(active[:, None], x - update, x)

    def reset(self, rows: torch.Tensor) -> None:
        """Forget the state (momentum) of the rows selected by the bool mask ``rows`` (B,)."""


class GradientDescent(GradientOptimizer):
    name = "gd"


class Momentum(GradientOptimizer):
    """Heavy-ball momentum ``v <- m v + g`` (``damped=True``: ``v <- m v + (1 - m) g``)."""

    def __init__(self, step_sizes: torch.Tensor, momentum: float = 0.9, damped: bool = False) -> None:
        super().__init__(step_sizes)
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.damped = momentum, damped
        self.name = "gddm" if damped else "gdm"
        self.velocity = torch.zeros_like(self.step_sizes)

    def direction(self, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        m = self.momentum
        new = m * self.velocity + ((1.0 - m) * grad if self.damped else grad)
        self.velocity = torch.where(active[:, None], new, self.velocity)
        return self.velocity

    def reset(self, rows: torch.Tensor) -> None:
        self.velocity[rows] = 0.0


class Adam(GradientOptimizer):
    """Adam (Kingma & Ba 2015) with bias correction, per batch row."""

    name = "adam"

    def __init__(self, step_sizes: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(step_sizes)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise InputError(f"Adam betas must be in [0, 1), got {betas}")
        self.betas, self.eps = betas, eps
        self.m = torch.zeros_like(self.step_sizes)
        self.v = torch.zeros_like(self.step_sizes)
        self.t = torch.zeros(self.step_sizes.shape[0], 1, dtype=self.step_sizes.dtype, device=self.step_sizes.device)

    def direction(self, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        keep = active[:, None]
        self.t = torch.where(keep, self.t + 1, self.t)
        self.m = torch.where(keep, b1 * self.m + (1 - b1) * grad, self.m)
        self.v = torch.where(keep, b2 * self.v + (1 - b2) * grad * grad, self.v)
        t = self.t.clamp_min(1)
        m_hat = self.m / (1 - b1 ** t)
        v_hat = self.v / (1 - b2 ** t)
        return m_hat / (v_hat.sqrt() + self.eps)

    def reset(self, rows: torch.Tensor) -> None:
        self.m[rows] = 0.0
        self.v[rows] = 0.0
        self.t[rows] = 0.0


def make_gradient_optimizer(name: str, step_sizes: torch.Tensor, momentum: float = 0.9) -> GradientOptimizer:
    """``gd`` | ``gdm`` | ``gddm`` | ``adam`` with step sizes (B, P)."""
    if name == "gd":
        return GradientDescent(step_sizes)
    if name == "gdm":
        return Momentum(step_sizes, momentum)
    if name == "gddm":
        return Momentum(step_sizes, momentum, damped=True)
    if name == "adam":
        return Adam(step_sizes)
    raise InputError(f"unknown gradient optimiser {name!r}; choose one of {', '.join(GRADIENT_OPTIMIZERS)}")


class LevenbergMarquardt:
    """Levenberg-Marquardt steps on residuals, per batch row, with Marquardt's diagonal scaling.

    ``damping`` (B,) starts at ``initial_damping``; after a step that lowers
    the cost it is divided by ``decrease``, after one that does not it is
    multiplied by ``increase`` and the step is rejected.
    """

    name = "lm"

    def __init__(self, n_rows: int, initial_damping: float = 1e-2, increase: float = 4.0, decrease: float = 3.0,
                 dtype: torch.dtype = torch.float64, device=None) -> None:
        if not (initial_damping > 0 and increase > 1 and decrease > 1):
            raise InputError("Levenberg-Marquardt needs initial_damping > 0 and increase, decrease > 1")
        self.damping = torch.full((n_rows,), float(initial_damping), dtype=dtype, device=device)
        self.increase, self.decrease = increase, decrease

    def propose(self, residual: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
        """The step dx (B, P) for residuals (B, M) and Jacobian (B, M, P)."""
        jtj = jacobian.transpose(-1, -2) @ jacobian
        jtr = (jacobian.transpose(-1, -2) @ residual[..., None])[..., 0]
        diag = torch.diagonal(jtj, dim1=-2, dim2=-1)
        # Marquardt scaling, with a floor so that a parameter the image does not see stays put
        floor = diag.amax(-1, keepdim=True).clamp_min(1e-30) * 1e-9
        scale = torch.maximum(diag, floor)
        system = jtj + torch.diag_embed(self.damping[:, None] * scale + floor)
        return -torch.linalg.solve(system, jtr)

    def update(self, improved: torch.Tensor) -> None:
        """Adapt the damping after a trial: ``improved`` (B,) bool."""
        self.damping = torch.where(improved, self.damping / self.decrease, self.damping * self.increase)
        self.damping.clamp_(1e-12, 1e12)
