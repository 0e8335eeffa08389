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

``options.search == "wide"`` first runs the global search
(`DiffRegLogic.registration.search.wide_search`) about the first start and
registers from its candidates as a multi-start (``result.search`` keeps
what it reports); ``options.nuisance`` other than "none" configures the
measure (`DiffRegLogic.similarity.robust.configure_measure`) and
``options.robust`` weighs each level's pixels from its start pose
(`reweighted_level`, `configured_measure`). Several
X-rays of one pose: `DiffRegLogic.registration.views` (the same loop,
`optimise`, over a list of views).

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

import dataclasses
import math
import time
from typing import Callable

import torch

from ..geometry.motions import perturb_pose, random_motions
from ..geometry.rigid import check_pose
from ..similarity.measure import Measure, as_measure
from ..volume.ct import Volume
from ..geometry.detector import Detector
from ..errors import InputError
from .checks import (check_detector, check_inputs, check_level_sizes, check_start, check_start_drrs,
                     check_start_footprints, check_volume)
from .context import Cancelled, RegistrationContext
from .initializers import initial_poses
from .optimizers import OPTIMIZERS
from .options import RegistrationOptions, as_options
from .parameters import PoseParameters, source_to_center
from .pyramid import Level, build_view_levels
from .results import Progress, RegistrationResult


def _image_and_mask(xray, mask):
    """(image, mask) from an `XRay` (its mask unless one is given) or from an image."""
    from ..xray.image import XRay

    if isinstance(xray, XRay):
        return xray.image, xray.mask if mask is None else mask
    return xray, mask


def configured_measure(opts: RegistrationOptions) -> Measure:
    """The measure a registration optimises: the similarity of ``opts``, with the nuisance model when asked.

    ``nuisance`` other than "none" hands the measure to
    `DiffRegLogic.similarity.robust.configure_measure` (imported only then).
    Robust weights (``robust``) are not part of the measure: they are not
    re-estimated at every evaluation (measured on the phantom: such weights
    let the optimiser move to poses where many pixels are rejected and the
    rest agree, 5 of 10 clean registrations failed) but set once per level,
    at the pose the level starts from, into the level's masks
    (`reweighted_level`): a fixed objective per level, iteratively
    reweighted from level to level. The coarsest level runs unweighted (far
    from the answer the residual is misalignment, and its weights would
    reject the edges that pull the pose home); a one-level registration
    weighs from its start.
    """
    measure = as_measure(opts.similarity)
    if opts.nuisance != "none":
        from ..similarity.robust import configure_measure

        measure = configure_measure(measure, dataclasses.replace(opts, robust="none"))
    return measure


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
    measure = configured_measure(opts)
    dtype = measure.dtype or volume.mu.dtype
    image, mask = check_inputs(volume, image, detector, mask, dtype)
    return optimise(volume, [(image, detector, mask, None)], starts, opts, measure, select_best=select_best,
                    callback=callback, cancel=cancel, reference_pose=reference_pose)


def optimise(volume: Volume, views: list[tuple], starts: torch.Tensor, opts: RegistrationOptions, measure: Measure,
             *, select_best: bool, callback, cancel, reference_pose=None,
             names: list[str] | None = None) -> list[RegistrationResult]:
    """The coarse-to-fine loop over checked inputs: one pose, any number of views.

    ``views``: (image (H, W), detector, mask (H, W) or None, from_first (4, 4)
    or None) per view, view 1 first, images and masks already checked
    (`checks.check_inputs`) in the measure's dtype; ``starts`` (B, 4, 4)
    float64 CPU view-1 poses; ``opts`` checked. ``names`` label the views in
    error messages (default "X-ray k"). With more than one view each result
    has ``view_poses`` (V, 4, 4) and ``view_similarities`` (V,).
    """
    names = names or [f"X-ray {k + 1}" for k in range(len(views))]
    center = volume.center.to(torch.float64).cpu()
    multi = len(views) > 1
    for (_, det, _, rel), name in zip(views, names):
        where = f" of {name}" if multi else ""
        for k, pose in enumerate(starts):
            seen = pose if rel is None else rel @ pose
            label = f"the initial pose {k + 1}{where}" if multi and starts.shape[0] > 1 else f"the initial pose{where}"
            check_start(volume, det, seen, label)
    select = bool(select_best) and starts.shape[0] > 1
    for _, det, _, _ in views:
        check_level_sizes(det, opts.levels, starts.shape[0], select)
    reference = starts[0] if reference_pose is None else _one_pose(reference_pose, "reference_pose")
    params = PoseParameters(opts.parameterization, reference, center, float(views[0][1].sdd))
    distances = [params.source_to_center() if rel is None else source_to_center(rel @ reference, center)
                 for _, _, _, rel in views]
    levels = build_view_levels(volume, [(im, det, mk, rel, dist) for (im, det, mk, rel), dist
                                        in zip(views, distances)], opts.levels)
    for view, name in zip(levels[0].views, names):
        seen = view.poses(starts)
        first = Level(levels[0].factor, view.volume, view.detector, view.xray, view.mask)
        try:
            if opts.footprint_mask:
                check_start_footprints(first, seen, select)
            check_start_drrs(first, seen, opts.renderer, opts.render_options(), select)
        except InputError as exc:
            raise InputError(f"{name}: {exc}" if multi else str(exc)) from None
    ctx = RegistrationContext(opts, params, measure, measure.dtype or volume.mu.dtype, callback, cancel, len(levels))
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
            if opts.robust != "none" and (index > 0 or len(levels) == 1):
                level = reweighted_level(ctx, level, x)
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
    if cancelled or opts.robust != "none":  # robust: report the similarity over the unweighted masks
        best = ctx.score(finest, x)
    per_view = None
    if multi:
        with torch.no_grad():
            per_view = ctx.evaluate_views(finest, x).T.tolist()  # (B, V)
    seconds = time.perf_counter() - ctx.t0
    poses = params.pose(x.detach().to(torch.float64).cpu())
    summary = opts.summary()
    return [RegistrationResult(
        pose=poses[i], initial_pose=start_poses[i], similarity=float(best[i]),
        initial_similarity=float(initial_similarity[i]), iterations=ctx.iterations, evaluations=ctx.evaluations,
        seconds=seconds, converged=(reasons[i] == "converged"), stop_reason=reasons[i], cancelled=cancelled,
        iterations_per_level=list(per_level), trace=_start_trace(ctx.trace, rows[i], starts.shape[0], select),
        options=summary,
        view_poses=None if not multi else torch.stack([v.poses(poses[i][None])[0] for v in finest.views]),
        view_similarities=None if per_view is None else per_view[i],
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
    best is refined. With ``options.search == "wide"`` the wide search's
    candidates about the first hypothesis are the starts instead, and
    ``result.search`` is what the search reported. Returns a
    `RegistrationResult`.
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
    search = None
    if opts.search == "wide":  # the search's candidates replace the hypotheses and the random starts
        image, checked_mask = _image_and_mask(xray, mask)
        measure = configured_measure(opts)
        image, checked_mask = check_inputs(volume, image, detector, checked_mask, measure.dtype or volume.mu.dtype)
        check_start(volume, detector, first)
        starts, search = wide_starts(volume, image, detector, checked_mask, first, opts, measure)
    elif opts.n_starts > 1:
        motions = random_motions(opts.n_starts - 1, opts.start_rotation_deg, opts.start_translation_mm, opts.seed)
        randoms = perturb_pose(first, motions, volume.center.to(torch.float64).cpu())
        for k, pose in enumerate(randoms):
            check_start(volume, detector, pose, f"random start {k + 1} (within start_rotation_deg = "
                        f"{opts.start_rotation_deg:g} deg, start_translation_mm = {opts.start_translation_mm:g} mm "
                        "of the initial pose; lower them)")
        starts = torch.cat([starts, randoms])
    result = register_batch(volume, xray, detector, starts, opts, mask=mask, select_best=True,
                            callback=callback, cancel=cancel, reference_pose=first)[0]
    # initial_pose is the candidate the refinement started from; the start the search was given is kept here
    result.search = None if search is None else {**search, "start_camera_from_world": first.tolist()}
    return result


def reweighted_level(ctx: RegistrationContext, level: Level, x: torch.Tensor) -> Level:
    """``level`` with each view's mask times the robust weights (B, H, W) at parameters x (B, 6), no gradient.

    The weights (`DiffRegLogic.similarity.robust.robust_weights`: Tukey's
    biweight, constant `REGISTRATION_TUKEY_C`, of the residual of an affine fit of the X-ray to the DRR,
    within the view's mask and, with ``footprint_mask``, the CT's footprint at x, 0 outside it)
    stay fixed while the level runs; with the footprint applied again at every evaluation, a level
    compares the pixels inside both its start's footprint and the current one.
    """
    from ..similarity.robust import REGISTRATION_TUKEY_C, robust_weights

    weighted = []
    with torch.no_grad():
        first = ctx.params.pose(x)
        for view in level.views:
            poses = view.poses(first)
            drr = ctx.render_view(level, view, poses)
            mask = ctx.view_mask(view, poses)  # with footprint_mask: times the footprint at this pose
            # 0 outside it: while the level runs it compares where the footprints at its start and at the current
            # pose overlap (measured so; letting the current footprint alone decide registered 2 of the 4 seeded
            # starts of Testing/registration/test_real_xray.py instead of 3)
            weights = robust_weights(drr, view.xray, mask, c=REGISTRATION_TUKEY_C).to(drr.dtype)
            weighted.append(weights if view.mask is None else view.mask.to(weights.dtype) * weights)
    extra = tuple(dataclasses.replace(v, mask=m) for v, m in zip(level.extra_views, weighted[1:]))
    return dataclasses.replace(level, mask=weighted[0], extra_views=extra)


def wide_starts(volume: Volume, image: torch.Tensor, detector: Detector, mask, first: torch.Tensor,
                opts: RegistrationOptions, measure: Measure) -> tuple[torch.Tensor, dict]:
    """The starts (K, 4, 4) float64 of a wide search about ``first`` and what the search reports (its info).

    Calls `DiffRegLogic.registration.search.wide_search` (imported only
    here, when ``opts.search == "wide"``) on checked inputs.
    """
    from .search import wide_search

    found = wide_search(volume, image, detector, mask, first, opts, measure)
    poses = check_pose(found.poses, name="poses of the wide search").detach().to(torch.float64).cpu()
    return poses, dict(found.info)
