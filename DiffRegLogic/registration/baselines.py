"""Gradient-free baselines as level optimisers: Powell and Nelder-Mead (scipy), CMA-ES (the ``cma`` package).

They search six numbers in units of `BASELINE_SCALE` (5 deg, 10 mm) around
each start, one start after the other, within ``max_evaluations`` renders
per start and level. While a start runs, the context knows the best
parameters of every start of the batch (finished, current, not yet started),
so a cancel returns one result per start, each paired with its own start.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import InputError
from .context import RegistrationContext
from .levels import LevelResult
from .options import BASELINE_SCALE
from .pyramid import Level


class _Baseline:
    """Common loop: one start at a time, the best point of each start tracked for the batch."""

    one_start_at_a_time = True
    needs_residual = False

    def run(self, ctx: RegistrationContext, level: Level, index: int, x: torch.Tensor,
            steps: torch.Tensor) -> LevelResult:
        scale = torch.tensor([math.radians(BASELINE_SCALE[0])] * 3 + [BASELINE_SCALE[1]] * 3,
                             dtype=x.dtype, device=x.device)
        batch_x = x.clone()  # finished rows: their result; the current row: its best; later rows: their start
        batch_best = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        reasons = []
        for row in range(x.shape[0]):
            x0 = x[row]
            track = {"iteration": 0, "best": -math.inf, "best_z": np.zeros(6)}
            row_level = level_row(level, row, x.shape[0])

            def objective_batch(zs: np.ndarray) -> np.ndarray:
                z = torch.as_tensor(np.atleast_2d(zs), dtype=x.dtype, device=x.device)
                sims = ctx.score(row_level, x0 + z * scale)
                for zi, s in zip(np.atleast_2d(zs), sims.tolist()):
                    if s > track["best"]:
                        track["best"], track["best_z"] = s, np.array(zi, dtype=np.float64)
                return -sims.cpu().numpy()

            def best_point() -> torch.Tensor:
                return x0 + torch.as_tensor(track["best_z"], dtype=x.dtype, device=x.device) * scale

            def note() -> None:
                batch_x[row] = best_point()
                batch_best[row] = track["best"]
                best = torch.tensor([track["best"]], dtype=x.dtype)
                ctx.report(index, track["iteration"], best, best, {}, batch_x.clone(), row=row,
                           batch_best=batch_best.clone())
                track["iteration"] += 1

            reasons.append(self.search(ctx, objective_batch, note))
            batch_x[row] = best_point()
            batch_best[row] = track["best"]
        return LevelResult(batch_x, batch_best, reasons)

    def search(self, ctx: RegistrationContext, objective_batch, note) -> str:
        raise NotImplementedError


def level_row(level: Level, row: int, batch: int) -> Level:
    """``level`` for start ``row`` alone: per-start masks (B, H, W) (robust weights) cut to that start's (1, H, W).

    A one-start-at-a-time optimiser scores populations of its own size, so a
    mask with one slice per start of the batch must be narrowed first.
    """
    def cut(mask):
        return mask[row:row + 1] if mask is not None and mask.dim() == 3 and mask.shape[0] == batch > 1 else mask

    if all(cut(v.mask) is v.mask for v in level.views):
        return level
    extra = tuple(dataclasses.replace(v, mask=cut(v.mask)) for v in level.extra_views)
    return dataclasses.replace(level, mask=cut(level.mask), extra_views=extra)


class ScipyBaseline(_Baseline):
    """``powell`` or ``nelder-mead`` through ``scipy.optimize.minimize``."""

    def __init__(self, method: str) -> None:
        self.method = method

    def search(self, ctx: RegistrationContext, objective_batch, note) -> str:
        opts = ctx.opts
        try:
            from scipy.optimize import minimize
        except ImportError as exc:
            raise InputError(f"the {opts.optimizer} baseline needs scipy: pip install 'diffreg[baselines]'") from exc
        options = {"maxfev": opts.max_evaluations, "xtol": 1e-3, "ftol": opts.tolerance}
        if self.method == "Nelder-Mead":
            options = {"maxfev": opts.max_evaluations, "xatol": 1e-3, "fatol": opts.tolerance,
                       "initial_simplex": np.vstack([np.zeros(6), 0.5 * np.eye(6)])}
        result = minimize(lambda z: float(objective_batch(z)[0]), np.zeros(6), method=self.method, options=options,
                          callback=lambda *args: note())
        return "converged" if result.success else "max_evaluations"


class CMABaseline(_Baseline):
    """``cma``: CMA-ES with sigma 0.5 (in `BASELINE_SCALE` units), seeded by ``seed + 1`` (2**32 - 1 wraps to 1)."""

    def search(self, ctx: RegistrationContext, objective_batch, note) -> str:
        opts = ctx.opts
        try:
            import cma
        except ImportError as exc:
            raise InputError("the CMA-ES baseline needs the cma package (a dependency of DiffReg): "
                             "pip install 'cma>=3.3'") from exc
        # cma wants a seed in 1 .. 2**32 - 1 (0 would mean "from the clock"): seed + 1, wrapping the largest seed
        seed = opts.seed % (2**32 - 1) + 1
        es = cma.CMAEvolutionStrategy(np.zeros(6), 0.5, {"seed": seed, "maxfevals": opts.max_evaluations,
                                                         "verbose": -9, "tolfun": opts.tolerance, "tolx": 1e-3})
        while not es.stop():
            population = es.ask()
            es.tell(population, list(objective_batch(np.array(population))))
            note()
        return "max_evaluations" if "maxfevals" in es.stop() else "converged"


POWELL = ScipyBaseline("Powell")
NELDER_MEAD = ScipyBaseline("Nelder-Mead")
CMA = CMABaseline()
