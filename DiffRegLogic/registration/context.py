"""What the levels of one (batched) registration share: rendering, scoring, the trace, progress and cancel.

A level optimiser calls `RegistrationContext.evaluate` (with autograd) or
`score` (without) to evaluate poses and `report` once per iteration; `report` appends to the trace, tells
the callback (with the best pose so far), remembers the best parameters of
every start for a cancel, and raises `Cancelled` when the callback or the
cancel function asks to stop.

`evaluate` renders every view of the level (one for a single X-ray) at
``from_first @ pose`` and returns the mean of the views' similarities; with
``options.footprint_mask`` each view's mask is multiplied by the CT's
footprint at the current pose (`DiffRegLogic.drr.footprint`), re-estimated
at every evaluation, with no gradient through it (a pose whose footprint
leaves no pixel is compared over the plain mask).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..drr.rendering import render
from ..errors import InputError
from ..similarity.measure import Measure
from .options import RegistrationOptions
from .parameters import PoseParameters
from .pyramid import Level, ViewLevel
from .results import Progress


class Cancelled(Exception):
    """Raised by `RegistrationContext.report` to stop a registration; the engine returns the best so far."""


class RegistrationContext:
    """State shared by the levels of one (batched) registration of B starts."""

    def __init__(self, opts: RegistrationOptions, params: PoseParameters, measure: Measure,
                 dtype: torch.dtype, callback: Callable[[Progress], bool | None] | None,
                 cancel: Callable[[], bool] | None, n_levels: int) -> None:
        self.opts, self.params, self.measure, self.dtype = opts, params, measure, dtype
        self.callback, self.cancel = callback, cancel
        self.n_levels = n_levels
        self.trace: list[dict] = []
        self.iterations = 0
        self.evaluations = 0
        self.best_x: torch.Tensor | None = None  # (B, 6) best parameters of each start so far (this level)
        self.best: torch.Tensor | None = None  # (B,) their similarity (-inf: not evaluated yet)
        self.t0 = time.perf_counter()

    def render(self, level: Level, x: torch.Tensor) -> torch.Tensor:
        """DRRs (B, H, W) of parameters x (B, 6) on ``level``, in the similarity's dtype (autograd kept)."""
        self.evaluations += x.shape[0]
        try:
            drr = render(level.volume, level.detector, self.params.pose(x), self.opts.renderer,
                         **self.opts.render_options())
        except InputError as exc:
            raise self.moved_out(level, exc) from exc
        return drr.to(self.dtype)

    def moved_out(self, level: Level, exc: Exception) -> InputError:
        """The error for a pose the optimiser moved out of what the renderer accepts.

        The starts were rendered once before the optimisation (`checks.check_start_drrs`), so a
        render refused later was refused for a pose the optimiser produced, not for the input.
        """
        rot, trans = self.opts.steps()
        return InputError(
            f"the {self.opts.optimizer} optimiser moved the pose where it cannot be rendered (pyramid level "
            f"with factor {level.factor:g}): {exc}; lower the step sizes (step_rotation_deg = {rot:g}, "
            f"step_translation_mm = {trans:g}) or start closer to the answer"
        )

    def similarity(self, level: Level, drr: torch.Tensor) -> torch.Tensor:
        """(B,) similarity of view 1's DRRs on ``level`` with the level's X-ray (its plain mask)."""
        return self.measure(drr, level.xray, level.mask)

    def render_view(self, level: Level, view: ViewLevel, poses: torch.Tensor) -> torch.Tensor:
        """DRRs (B, H, W) of one view for its camera_from_world ``poses`` (B, 4, 4), in the similarity's dtype."""
        self.evaluations += poses.shape[0]
        try:
            drr = render(view.volume, view.detector, poses, self.opts.renderer, **self.opts.render_options())
        except InputError as exc:
            raise self.moved_out(level, exc) from exc
        return drr.to(self.dtype)

    def view_mask(self, view: ViewLevel, poses: torch.Tensor) -> torch.Tensor | None:
        """The weights of one view at ``poses`` (B, 4, 4): its mask, times the CT's footprint when asked.

        A pose where the footprint leaves no pixel of the mask (the optimiser
        moved a start where every ray misses the CT or crosses a cut face)
        is compared over the view's own mask instead, so that one stray start
        does not stop the registration (the multi-start keeps the best start).
        """
        if not self.opts.footprint_mask:
            return view.mask
        from ..drr.footprint import footprint_mask, masked_by_footprint

        footprint = footprint_mask(view.volume, view.detector, poses.detach(), exclude_cut_faces=True).to(self.dtype)
        weights = masked_by_footprint(view.mask, footprint)
        empty = weights.flatten(1).sum(1) <= 0
        if bool(empty.any()):
            weights = torch.where(empty[:, None, None], masked_by_footprint(view.mask, torch.ones_like(footprint)),
                                  weights)
        return weights

    def evaluate_views(self, level: Level, x: torch.Tensor) -> torch.Tensor:
        """(V, B) similarity of every view at parameters x (B, 6) on ``level`` (autograd kept)."""
        first = self.params.pose(x)
        sims = []
        for view in level.views:
            poses = view.poses(first)
            sims.append(self.measure(self.render_view(level, view, poses), view.xray, self.view_mask(view, poses)))
        return torch.stack(sims)

    def evaluate(self, level: Level, x: torch.Tensor) -> torch.Tensor:
        """(B,) similarity at parameters x (B, 6) on ``level``: the mean over its views (autograd kept)."""
        sims = self.evaluate_views(level, x)
        return sims[0] if sims.shape[0] == 1 else sims.mean(0)

    def score(self, level: Level, x: torch.Tensor) -> torch.Tensor:
        """(B,) similarity at parameters x on ``level`` (mean over its views), without gradients."""
        with torch.no_grad():
            return self.evaluate(level, x)

    def report(self, level_index: int, iteration: int, current: torch.Tensor, best: torch.Tensor, extra: dict,
               best_x: torch.Tensor, *, row: int | None = None, batch_best: torch.Tensor | None = None) -> None:
        """Trace one iteration; tell the callback (with the best pose so far); raise `Cancelled` on cancel.

        ``current`` and ``best`` are the (B,) similarities of the batch, and
        ``best_x`` (B, 6) the best parameters of every start. An optimiser
        that runs the starts one at a time passes ``row`` (the start it is
        on; ``current`` and ``best`` are then that start's, shape (1,)) and
        ``batch_best`` (B,), the best of every start so far (-inf where a
        start has not been evaluated yet).
        """
        self.iterations += 1
        self.best_x = best_x.detach()
        self.best = (best if batch_best is None else batch_best).detach()
        elapsed = time.perf_counter() - self.t0
        entry = {"level": level_index, "iteration": iteration, "similarity": current.tolist(),
                 "best_similarity": best.tolist(), "seconds": round(elapsed, 4), **extra}
        if row is not None:
            entry["start"] = int(row)
        self.trace.append(entry)
        stop = False
        if self.callback is not None:
            if row is None:
                row = int(best.argmax())
            with torch.no_grad():
                pose = self.params.pose(best_x[row:row + 1].detach())[0].to(torch.float64).cpu()
            info = Progress(level_index, self.n_levels, iteration, self.iterations, float(best.max()),
                            float(current.max()), elapsed, pose)
            stop = bool(self.callback(info))
        if stop or (self.cancel is not None and self.cancel()):
            raise Cancelled()
