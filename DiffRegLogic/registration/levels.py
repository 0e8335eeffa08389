"""Level optimisers: how the poses of a batch are optimised on one pyramid level.

A level optimiser is an object with ``run(ctx, level, index, x, steps) ->
LevelResult``: ``x`` (B, 6) are the pose parameters of the B starts entering
the level, ``steps`` (B, 6) their step sizes (rad, mm) at this level. It
evaluates poses through the `RegistrationContext` (which traces, reports
progress and cancels) and returns the best parameters, their similarity and
why each start stopped. `OPTIMIZERS` (`DiffRegLogic.registration.optimizers`)
names the instances below; the gradient-free baselines live in `baselines`.

Stopping rules:

* gradient family: when the best similarity of a start has not improved by
  ``tolerance`` for ``patience`` iterations, its step sizes are halved and
  its search restarts from its best pose; a plateau reached after
  ``max_step_reductions`` halvings ends its level as ``"converged"``. The
  search therefore runs at ``max_step_reductions + 1`` step sizes;
* Levenberg-Marquardt: converged when an accepted step is below
  ``min_step_deg`` / ``min_step_mm``, or after ``patience`` rejected steps in
  a row;
* otherwise a level stops at ``max_iterations`` (``"max_iterations"``).

Several views (`DiffRegLogic.registration.views`): the gradient family
climbs the mean of the views' similarities (`RegistrationContext.evaluate`);
Levenberg-Marquardt concatenates the views' residuals, each divided by
sqrt(V), so that ||r||^2 = mean over views of (1 - similarity) = 1 - mean
similarity, and chains each view's DRR Jacobian through its own
``from_first @ pose``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ..drr.jacobian import render_with_jacobian
from ..errors import InputError
from .context import RegistrationContext
from .pyramid import Level, ViewLevel
from .steps import LevenbergMarquardt, make_gradient_optimizer


@dataclass
class LevelResult:
    """What a level optimiser returns: best parameters (B, 6), their similarity (B,), a stop reason per start."""

    x: torch.Tensor
    similarity: torch.Tensor
    reasons: list[str]


class LevelOptimizer(Protocol):
    """The optimiser plug point (see the module docstring)."""

    one_start_at_a_time: bool
    needs_residual: bool

    def run(self, ctx: RegistrationContext, level: Level, index: int, x: torch.Tensor,
            steps: torch.Tensor) -> LevelResult: ...


class GradientLevel:
    """The gradient family: ``gd``, ``gdm``, ``gddm``, ``adam`` on the autograd gradient of -similarity."""

    one_start_at_a_time = False
    needs_residual = False

    def __init__(self, rule: str) -> None:
        self.rule = rule

    def run(self, ctx: RegistrationContext, level: Level, index: int, x: torch.Tensor,
            steps: torch.Tensor) -> LevelResult:
        opts = ctx.opts
        n = x.shape[0]
        opt = make_gradient_optimizer(self.rule, steps, opts.momentum)
        best_x, best = x.clone(), torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        since_best = torch.zeros(n, dtype=torch.long)
        reductions = torch.zeros(n, dtype=torch.long)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        reasons = ["max_iterations"] * n
        for iteration in range(opts.max_iterations):
            xv = x.detach().requires_grad_(True)
            with torch.enable_grad():
                sim = ctx.evaluate(level, xv)
                (grad,) = torch.autograd.grad(-sim.sum(), xv)
            sim = sim.detach()
            if not torch.isfinite(grad).all():
                raise InputError(
                    f"the gradient of the similarity {ctx.measure.name!r} is not finite (NaN or inf) at iteration "
                    f"{iteration} of the pyramid level with factor {level.factor:g}; a custom similarity must be "
                    "differentiable and finite at every pose: check it, or use a gradient-free optimiser "
                    "(powell, nelder-mead, cma)"
                )
            better = sim > best
            significant = (sim > best + opts.tolerance).cpu()
            best_x = torch.where(better[:, None], x, best_x)
            best = torch.where(better, sim, best)
            since_best = torch.where(significant, torch.zeros_like(since_best), since_best + 1)
            plateau = (since_best >= opts.patience) & active.cpu()
            step_now = active.clone()
            if plateau.any():
                # a plateau after the last allowed halving ends the level; any other halves the steps
                done_cpu = plateau & (reductions >= opts.max_step_reductions)
                halve_cpu = plateau & ~done_cpu
                done, halve = done_cpu.to(x.device), halve_cpu.to(x.device)
                reductions += halve_cpu.long()
                opt.step_sizes[halve] *= 0.5
                opt.reset(halve)
                x = torch.where(halve[:, None], best_x, x)
                since_best[plateau] = 0
                step_now &= ~plateau.to(x.device)
                for i in torch.nonzero(done_cpu).flatten().tolist():
                    reasons[i] = "converged"
                active &= ~done
            ctx.report(index, iteration, sim, best, {"step_scale": (opt.step_sizes[:, 0] / steps[:, 0]).tolist()},
                       best_x)
            if not active.any():
                break
            x = opt.step(x, grad, step_now)
        return LevelResult(best_x, best, reasons)


def _residual_cost(residual: torch.Tensor) -> torch.Tensor:
    return (residual * residual).sum(-1)


def _concatenate(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """One view: its tensor as it is; V views: concatenated along ``dim``, each / sqrt(V) (mean of the costs)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim) / math.sqrt(len(parts))


class LevenbergMarquardtLevel:
    """``lm``: Levenberg-Marquardt on the similarity's residual, DRR Jacobian from `drr.jacobian`."""

    one_start_at_a_time = False
    needs_residual = True

    @staticmethod
    def _jacobian(residual_fn, drr: torch.Tensor, jac: torch.Tensor, xray: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """d residual / d params (B, M, P): the DRR Jacobian (B, H, W, P) pushed through the residual (one JVP each)."""
        def push(tangent: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(lambda a: residual_fn(a, xray, mask), (drr,), (tangent,))[1]

        return torch.stack([push(jac[..., p]) for p in range(jac.shape[-1])], -1)

    @staticmethod
    def _render(ctx: RegistrationContext, level: Level, view: ViewLevel, x: torch.Tensor):
        def pose_of(params: torch.Tensor) -> torch.Tensor:
            return view.poses(ctx.params.pose(params))

        try:
            drr, jac = render_with_jacobian(view.volume, view.detector, pose_of, x, ctx.opts.renderer,
                                            step_voxels=ctx.opts.step_voxels, max_memory_mb=ctx.opts.max_memory_mb,
                                            backend=ctx.opts.backend)
        except (InputError, FloatingPointError) as exc:  # the Jacobian of a pose with the CT behind the source
            raise ctx.moved_out(level, exc) from exc
        ctx.evaluations += x.shape[0]
        return drr.to(ctx.dtype), jac.to(ctx.dtype)

    def _linearise(self, ctx: RegistrationContext, level: Level, x: torch.Tensor, residual_fn):
        """Residual (B, M) at x and its Jacobian (B, M, P): the views' residuals concatenated, each / sqrt(V)."""
        views = level.views
        residuals, jacobians = [], []
        with torch.no_grad():
            first = ctx.params.pose(x)
        for view in views:
            drr, jac = self._render(ctx, level, view, x)
            mask = ctx.view_mask(view, view.poses(first))
            residuals.append(residual_fn(drr, view.xray, mask))
            jacobians.append(self._jacobian(residual_fn, drr, jac, view.xray, mask))
        return _concatenate(residuals, 1), _concatenate(jacobians, 1)

    @staticmethod
    def _residual(ctx: RegistrationContext, level: Level, x: torch.Tensor, residual_fn) -> torch.Tensor:
        """Residual (B, M) at x without its Jacobian (a trial step)."""
        with torch.no_grad():
            first = ctx.params.pose(x)
            out = []
            for view in level.views:
                poses = view.poses(first)
                out.append(residual_fn(ctx.render_view(level, view, poses), view.xray, ctx.view_mask(view, poses)))
        return _concatenate(out, 1)

    def run(self, ctx: RegistrationContext, level: Level, index: int, x: torch.Tensor,
            steps: torch.Tensor) -> LevelResult:
        opts = ctx.opts
        residual_fn = ctx.measure.require_residual()
        n = x.shape[0]
        lm = LevenbergMarquardt(n, dtype=x.dtype, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        rejected = torch.zeros(n, dtype=torch.long, device=x.device)
        reasons = ["max_iterations"] * n
        min_rot, min_trans = math.radians(opts.min_step_deg), opts.min_step_mm
        # residual and its Jacobian (the DRR Jacobian chained through the residual function)
        res, j_res = self._linearise(ctx, level, x, residual_fn)
        cost = _residual_cost(res)
        for iteration in range(opts.max_iterations):
            dx = lm.propose(res, j_res)
            dx = torch.where(active[:, None], dx, torch.zeros_like(dx))
            trial = x + dx
            trial_res = self._residual(ctx, level, trial, residual_fn)
            trial_cost = _residual_cost(trial_res)
            improved = (trial_cost < cost) & active
            lm.update(improved)
            rejected = torch.where(improved, torch.zeros_like(rejected), rejected + (active & ~improved).long())
            small = (dx[:, :3].norm(dim=-1) < min_rot) & (dx[:, 3:].norm(dim=-1) < min_trans) & improved
            x = torch.where(improved[:, None], trial, x)
            cost = torch.where(improved, trial_cost, cost)
            done = active & (small | (rejected >= opts.patience))
            for i in torch.nonzero(done).flatten().tolist():
                reasons[i] = "converged"
            active = active & ~done
            ctx.report(index, iteration, 1.0 - trial_cost, 1.0 - cost, {"damping": lm.damping.tolist()}, x.clone())
            if not active.any():
                break
            if improved.any():
                res, j_res = self._linearise(ctx, level, x, residual_fn)
        return LevelResult(x, 1.0 - cost, reasons)


ADAM = GradientLevel("adam")
GD = GradientLevel("gd")
GDM = GradientLevel("gdm")
GDDM = GradientLevel("gddm")
LM = LevenbergMarquardtLevel()
