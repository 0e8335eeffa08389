"""Multi-view registration: one CT, two or more X-rays of a known relative geometry, one rigid pose.

One X-ray constrains the CT's position along the beam (depth) weakly: moving
the CT towards the source only magnifies its projection a little. A second
view from another direction sees that depth as a lateral shift. With
biplane systems, or two C-arm shots whose DICOM angles give their relation,
the X-rays share one unknown, the pose of the CT, and their similarities are
averaged:

* a `View` is an X-ray (an (H, W) image or an `XRay`), its `Detector`, an
  optional mask (H, W), and ``from_first`` = camera_k_from_camera_1 (4, 4,
  mm): view k's camera_from_world is ``from_first @ pose`` where ``pose`` is
  view 1's (the first view's ``from_first`` is the identity);
* `relative_poses` builds the relations from each view's start pose in one
  world (``start_k @ inv(start_1)``), `views_from_starts` the views with them;
* `register_views` optimises view 1's pose on the mean of the views'
  similarities, coarse to fine, each view with its own detector, mask and
  pyramid (the loop of `engine.optimise`, any optimiser: the gradient family
  climbs the mean; Levenberg-Marquardt stacks the views' residuals weighted
  1/sqrt(V), so ||r||^2 = 1 - mean similarity; the baselines score the mean).

A wide search (``options.search == "wide"``) runs on view 1 alone and its
candidates start the multi-view multi-start. `camera_error_mm` measures the
error of a pose in a camera's axes (depth = its z component).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..geometry.rigid import check_pose
from ..volume.ct import Volume
from .checks import check_detector, check_inputs, check_start, check_volume
from .engine import _check_callables, _image_and_mask, configured_measure, optimise, wide_starts
from .initializers import initial_poses
from .options import RegistrationOptions, as_options
from .results import Progress, RegistrationResult

RELATION_TOLERANCE = 1e-6
"""Largest entry of ``from_first - identity`` (mm or rotation units) accepted for the first view."""
MAX_VIEWS = 16
"""Views of one registration (each is rendered at every evaluation)."""


@dataclass
class View:
    """One X-ray of a multi-view registration (see the module docstring).

    ``xray`` (H, W) image in the line-integral convention (bone bright) or an
    `XRay` (its mask is used unless ``mask`` is given); ``detector`` its
    geometry; ``mask`` (H, W) weights in [0, 1] or None; ``from_first`` (4,
    4) camera_k_from_camera_1 or None (identity); ``name`` labels the view
    in error messages (default "X-ray k").
    """

    xray: Any
    detector: Detector
    mask: Any = None
    from_first: Any = None
    name: str | None = None


def relative_poses(start_poses) -> torch.Tensor:
    """camera_k_from_camera_1 (V, 4, 4) float64 from each view's camera_from_world (V, 4, 4) in one world.

    ``start_k @ inv(start_1)``: the first is the identity.
    """
    poses = check_pose(start_poses, name="start poses of the views").detach().to(torch.float64).cpu()
    return poses @ torch.linalg.inv(poses[0])


def views_from_starts(xrays: Sequence, detectors: Sequence[Detector], start_poses, masks: Sequence | None = None,
                      names: Sequence[str] | None = None) -> tuple[list[View], torch.Tensor]:
    """Views whose relations come from their start poses (V, 4, 4), and view 1's start (4, 4) float64.

    Use it when each X-ray has its own start in the same world (a pose file
    per view, or the DICOM angles of each shot about the same isocentre).
    """
    poses = check_pose(start_poses, name="start poses of the views").detach().to(torch.float64).cpu()
    n = len(xrays)
    for what, items in (("detectors", detectors), ("start poses", poses), ("masks", masks), ("names", names)):
        if items is not None and len(items) != n:
            raise InputError(f"{n} X-rays but {len(items)} {what}: give one per X-ray")
    relations = relative_poses(poses)
    views = [View(xrays[k], detectors[k], None if masks is None else masks[k], None if k == 0 else relations[k],
                  None if names is None else names[k]) for k in range(n)]
    return views, poses[0].clone()


def register_views(
    volume: Volume,
    views: Sequence[View],
    initial_pose,
    options: RegistrationOptions | None = None,
    *,
    callback: Callable[[Progress], bool | None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RegistrationResult:
    """Register ``volume`` to every X-ray of ``views`` at once: one pose, the mean of the views' similarities.

    ``initial_pose`` is view 1's camera_from_world (4, 4) or an initialiser
    ``(xray, detector, volume) -> (K, 4, 4)`` called with view 1's X-ray and
    detector; hypotheses, ``options.n_starts`` random starts and a wide
    search (on view 1) work as in `register`. Returns a `RegistrationResult`
    whose ``pose`` is view 1's, ``view_poses`` (V, 4, 4) every view's and
    ``view_similarities`` (V,) their similarities at the finest level.
    """
    opts = as_options(options)
    check_volume(volume)
    _check_callables(callback, cancel)
    views = _checked_views(views)
    names = [view.name or f"X-ray {k + 1}" for k, view in enumerate(views)]
    relations = [None] + [_relation(view.from_first, name) for view, name in zip(views[1:], names[1:])]
    first_view = views[0]
    if callable(initial_pose) and not isinstance(initial_pose, torch.Tensor):
        hypotheses = initial_poses(initial_pose, first_view.xray, first_view.detector, volume)
    else:
        hypotheses = check_pose(initial_pose, name="initial pose").to(torch.float64).cpu()
        if hypotheses.shape[0] != 1:
            raise InputError(f"register_views takes one initial pose (4, 4) of view 1, got "
                             f"{tuple(hypotheses.shape)}; pass an initialiser for several hypotheses")
    first = hypotheses[0]
    measure = configured_measure(opts)
    dtype = measure.dtype or volume.mu.dtype
    checked = []
    for view, relation, name in zip(views, relations, names):
        image, mask = _image_and_mask(view.xray, view.mask)
        try:
            image, mask = check_inputs(volume, image, view.detector, mask, dtype)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        checked.append((image, view.detector, mask, relation))
    starts, search = hypotheses, None
    if opts.search == "wide":
        check_start(volume, first_view.detector, first)
        starts, search = wide_starts(volume, checked[0][0], first_view.detector, checked[0][2], first, opts, measure)
    elif opts.n_starts > 1:
        motions = random_motions(opts.n_starts - 1, opts.start_rotation_deg, opts.start_translation_mm, opts.seed)
        starts = torch.cat([hypotheses, perturb_pose(first, motions, volume.center.to(torch.float64).cpu())])
    result = optimise(volume, checked, starts, opts, measure, select_best=True, callback=callback, cancel=cancel,
                      reference_pose=first, names=names)[0]
    if result.view_poses is None:  # one view: the same answer as register, in the multi-view form
        result.view_poses = result.pose[None].clone()
        result.view_similarities = [result.similarity]
    # initial_pose is the candidate the refinement started from; the start the search was given is kept here
    result.search = None if search is None else {**search, "start_camera_from_world": first.tolist()}
    return result


def _checked_views(views) -> list[View]:
    if isinstance(views, View) or not isinstance(views, (list, tuple)):
        raise InputError(f"views must be a list of View (one per X-ray), got {type(views).__name__}")
    if not 1 <= len(views) <= MAX_VIEWS:
        raise InputError(f"give 1 to {MAX_VIEWS} views, got {len(views)}")
    for k, view in enumerate(views):
        if not isinstance(view, View):
            raise InputError(f"views[{k}] must be a View(xray, detector, mask=None, from_first=None), "
                             f"got {type(view).__name__}")
        check_detector(view.detector)
    first = views[0].from_first
    if first is not None:
        relation = _relation(first, views[0].name or "X-ray 1")
        if float((relation - torch.eye(4, dtype=torch.float64)).abs().max()) > RELATION_TOLERANCE:
            raise InputError("the first view's from_first must be the identity (or None): the pose registered is "
                             "view 1's camera_from_world, and the other views' from_first are relative to it")
    return list(views)


def _relation(from_first, name: str) -> torch.Tensor | None:
    """camera_k_from_camera_1 (4, 4) float64, checked rigid; None stays None (identity)."""
    if from_first is None:
        return None
    checked = check_pose(from_first, name=f"from_first of {name}")
    if checked.shape[0] != 1:
        raise InputError(f"from_first of {name} must be one 4x4 matrix, got shape {tuple(checked.shape)}")
    return checked[0].detach().to(torch.float64).cpu().clone()


def camera_error_mm(estimate: torch.Tensor, truth: torch.Tensor, center) -> torch.Tensor:
    """(3,) float64 displacement (mm) of the world point ``center`` between two camera_from_world poses (4, 4).

    In the axes of ``truth``'s camera: x, y across the image, z along the
    beam (the depth error). Poses of view 1 give view 1's depth error; map
    another view's pose to view 1 with ``inv(from_first) @ pose_k`` first.
    """
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    est = torch.as_tensor(estimate, dtype=torch.float64)
    tru = torch.as_tensor(truth, dtype=torch.float64)
    return (est[:3, :3] @ c + est[:3, 3]) - (tru[:3, :3] @ c + tru[:3, 3])
