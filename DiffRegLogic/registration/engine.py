"""The registration loop: ``register`` (one X-ray, one start or a multi-start) and ``register_batch``.

``register(volume, xray, detector, start)`` optimises the pose
(camera_from_world) so that the DRR of ``volume`` on ``detector`` is most
similar to ``xray``. Its three plug points:

* the **start**: a pose (4, 4), or an initialiser ``(xray, detector,
  volume) -> (K, 4, 4)`` (`initializers`); K > 1 hypotheses and
  ``options.n_starts > 1`` random starts around the first form a
  multi-start;
* the **similarity**: ``options.similarity``, a name, a `Measure` or any
  callable ``(drr, xray, mask) -> (B,)`` (`DiffRegLogic.similarity.measure`);
* the **level optimiser**: ``options.optimizer``, a name of `OPTIMIZERS`
  (`levels`, `baselines`).

Coarse to fine over the levels of `pyramid`; with several starts they all
run on the coarsest level as one batch and the best goes on to the finer
levels. The best pose seen is kept. ``converged`` in the result means the
finest level stopped by its convergence test, not by the iteration cap or a
cancel: it says the optimiser settled, not that the pose is right (a wrong
local optimum also converges; the final similarity is the signal for that).

``callback(progress)`` is called after every iteration with a `Progress`;
returning True (or ``cancel()`` returning True) stops the registration,
which then returns the best pose so far with ``cancelled=True``.

Everything runs on the device and dtype of ``volume.mu`` (similarities in
the measure's dtype; float32 or float64: a half-precision CT is refused).
Results are deterministic for a given seed on the CPU.

Bad input is an `InputError` before the optimisation starts (`checks`:
options, CT, detector, X-ray, mask, starts, pyramid sizes, one coarse render
of the starts); a pose the optimiser later moves out of what the renderer
accepts is an `InputError` naming the step sizes. No input is changed.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..geometry.motions import perturb_pose, random_motions
from ..geometry.rigid import check_pose
from ..similarity.measure import as_measure
from ..volume.ct import Volume
from ..geometry.detector import Detector
from ..errors import InputError
from .checks import (check_detector, check_inputs, check_level_sizes, check_start, check_start_drrs,
                     check_volume)
from .context import Cancelled, RegistrationContext
from .initializers import initial_poses
from .optimizers import OPTIMIZERS
from .options import RegistrationOptions, as_options
from .parameters import PoseParameters
from .pyramid import build_levels
from .results import Progress, RegistrationResult


def _image_and_mask(xray, mask):
    """(image, mask) from an `XRay` (its mask unless one is given) or from an image."""
    from ..xray.image import XRay

    if isinstance(xray, XRay):
        return xray.image, xray.mask if mask is None else mask
    return xray, mask


def register_batch(
    volume: Volume,
    xray,
    detector: Detector,
    initial_poses: torch.Tensor,
    options: RegistrationOptions | None = None,
    *,
    mask=None,
    select_best: bool = False,
    callback: Callable[[Progress], bool | None] | None = None,
    cancel: Callable[[], bool] | None = None,
    reference_pose: torch.Tensor | None = None,
) -> list[RegistrationResult]:
    """Register from each of the initial poses (B, 4, 4) as one batch; one result per start.

    With ``select_best`` only the start with the highest similarity after
    the coarsest level goes on to the finer levels (multi-start), and a
    single result is returned. ``reference_pose`` is the pose the SE(3)
    parameters are taken about (default: the first start). ``xray`` is an
    (H, W) image or an `XRay` (whose mask is used unless ``mask`` is given).
    """
    opts = as_options(options)
    check_volume(volume)
    _check_callables(callback, cancel)
    image, mask = _image_and_mask(xray, mask)
    starts = check_pose(initial_poses, name="initial poses").detach().to(torch.float64).cpu().clone()
    measure = as_measure(opts.similarity)
    dtype = measure.dtype or volume.mu.dtype
    image, mask = check_inputs(volume, image, detector, mask, dtype)
    for pose in starts:
        check_start(volume, detector, pose)
    select = bool(select_best) and starts.shape[0] > 1
    check_level_sizes(detector, opts.levels, starts.shape[0], select)
    center = volume.center.to(torch.float64).cpu()
    reference = starts[0] if reference_pose is None else _one_pose(reference_pose, "reference_pose")
    params = PoseParameters(opts.parameterization, reference, center, float(detector.sdd))
    levels = build_levels(volume, image, detector, mask, opts.levels, params.source_to_center())
    check_start_drrs(levels[0], starts, opts.renderer, opts.render_options(), select)
    ctx = RegistrationContext(opts, params, measure, dtype, callback, cancel, len(levels))
    optimiser = OPTIMIZERS.lookup(opts.optimizer)
    # parameters in the CT's dtype (float32 or float64: check_volume refuses half precision, whose poses
    # would fail the rigidity check); the starts above were checked in float64, as given
    x_dtype = torch.promote_types(volume.mu.dtype, torch.float32)
    x0 = params.params(starts).to(dtype=x_dtype, device=volume.mu.device)
    finest = levels[-1]
    # the start's similarity at full resolution is reported; with a multi-start only the chosen start's is needed
    initial_similarity = None if select else ctx.score(finest, x0)
    rot, trans = opts.steps()
    base = torch.tensor([math.radians(rot)] * 3 + [trans] * 3, dtype=x0.dtype, device=x0.device)
    x, best, reasons = x0, None, ["max_iterations"] * x0.shape[0]
    per_level: list[int] = []
    cancelled, chosen = False, None
    try:
        for index, level in enumerate(levels):
            before = ctx.iterations
            steps = (base * (level.factor / levels[0].factor)).expand(x.shape[0], 6).clone()
            out = optimiser.run(ctx, level, index, x, steps)
            x, best, reasons = out.x, out.similarity, out.reasons
            per_level.append(ctx.iterations - before)
            if select and index == 0:
                chosen = int(torch.argmax(best))
                x, best, reasons = x[chosen:chosen + 1], best[chosen:chosen + 1], [reasons[chosen]]
    except Cancelled:
        cancelled = True
        per_level.append(ctx.iterations - sum(per_level))
        if ctx.best_x is not None:
            x = ctx.best_x
        if select and x.shape[0] > 1:
            chosen = int(torch.argmax(ctx.best)) if ctx.best is not None else 0
            x = x[chosen:chosen + 1]
        reasons = ["cancelled"] * x.shape[0]
    if select:
        start_poses = starts[chosen:chosen + 1]
        initial_similarity = ctx.score(finest, x0[chosen:chosen + 1])
        rows = [chosen]
    else:
        start_poses = starts
        rows = list(range(starts.shape[0]))
    if cancelled:
        best = ctx.score(finest, x)
    seconds = time.perf_counter() - ctx.t0
    poses = params.pose(x.detach().to(torch.float64).cpu())
    summary = opts.summary()
    return [RegistrationResult(
        pose=poses[i], initial_pose=start_poses[i], similarity=float(best[i]),
        initial_similarity=float(initial_similarity[i]), iterations=ctx.iterations, evaluations=ctx.evaluations,
        seconds=seconds, converged=(reasons[i] == "converged"), stop_reason=reasons[i], cancelled=cancelled,
        iterations_per_level=list(per_level), trace=_start_trace(ctx.trace, rows[i], starts.shape[0], select),
        options=summary,
    ) for i in range(poses.shape[0])]


def _check_callables(callback, cancel) -> None:
    for name, value in (("callback", callback), ("cancel", cancel)):
        if value is not None and not callable(value):
            raise InputError(f"{name} must be a function or None, got {type(value).__name__}")


def _one_pose(pose, name: str) -> torch.Tensor:
    """One camera_from_world (4, 4) float64 CPU copy of ``pose``, checked."""
    checked = check_pose(pose, name=name)
    if checked.shape[0] != 1:
        raise InputError(f"{name} must be one 4x4 pose, got a batch of shape {tuple(checked.shape)}")
    return checked[0].detach().to(torch.float64).cpu().clone()


def _start_trace(trace: list[dict], start: int, n_starts: int, selected: bool) -> list[dict]:
    """The trace entries of one start (index into the starts), with its own similarities.

    Level 0 holds every start of the batch; after a multi-start selection the
    finer levels hold the chosen start alone (batch row 0). An entry either
    lists one value per batch row, or (optimisers that run starts one at a
    time) carries the ``start`` row it belongs to.
    """
    out = []
    for entry in trace:
        row = start if (entry["level"] == 0 or not selected) else 0
        sims, bests = entry["similarity"], entry["best_similarity"]
        if "start" in entry:
            if entry["start"] != row:
                continue
            pick = 0
        elif len(sims) == 1:
            pick = 0
        elif row < len(sims):
            pick = row
        else:
            continue
        item = {k: v for k, v in entry.items() if k not in ("similarity", "best_similarity", "step_scale", "damping",
                                                             "start")}
        item["similarity"] = sims[pick]
        item["best_similarity"] = bests[pick]
        out.append(item)
    return out


def register(
    volume: Volume,
    xray,
    detector: Detector,
    initial_pose,
    options: RegistrationOptions | None = None,
    *,
    mask=None,
    callback: Callable[[Progress], bool | None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RegistrationResult:
    """Register ``volume`` to ``xray`` seen on ``detector``, from ``initial_pose``.

    ``xray`` is an (H, W) image in the line-integral convention (bone
    bright; see `DiffRegLogic.xray`) or an `XRay`; ``mask`` (H, W) weights
    its pixels (0 = ignore). ``initial_pose`` is camera_from_world (4, 4) or
    an initialiser ``(xray, detector, volume) -> (K, 4, 4)``. The K
    hypotheses, plus ``options.n_starts - 1`` random starts within
    ``start_rotation_deg`` / ``start_translation_mm`` of the first (seeded by
    ``options.seed``), are registered together on the coarsest level and the
    best is refined. Returns a `RegistrationResult`.
    """
    opts = as_options(options)
    check_volume(volume)
    check_detector(detector)
    if callable(initial_pose) and not isinstance(initial_pose, torch.Tensor):
        hypotheses = initial_poses(initial_pose, xray, detector, volume)
    else:
        hypotheses = check_pose(initial_pose, name="initial pose").to(torch.float64).cpu()
        if hypotheses.shape[0] != 1:
            raise InputError(f"register takes one initial pose (4, 4), got {tuple(hypotheses.shape)}; "
                             "use register_batch, or pass an initialiser")
    first = hypotheses[0]
    starts = hypotheses
    if opts.n_starts > 1:
        motions = random_motions(opts.n_starts - 1, opts.start_rotation_deg, opts.start_translation_mm, opts.seed)
        randoms = perturb_pose(first, motions, volume.center.to(torch.float64).cpu())
        for k, pose in enumerate(randoms):
            check_start(volume, detector, pose, f"random start {k + 1} (within start_rotation_deg = "
                        f"{opts.start_rotation_deg:g} deg, start_translation_mm = {opts.start_translation_mm:g} mm "
                        "of the initial pose; lower them)")
        starts = torch.cat([starts, randoms])
    return register_batch(volume, xray, detector, starts, opts, mask=mask, select_best=True,
                          callback=callback, cancel=cancel, reference_pose=first)[0]
