"""Robust pixel weights for the similarity (Tukey's biweight), and `configure_measure`, the measure a registration uses.

Real X-rays hold pixels the CT cannot explain: instruments, screws and
cables, anatomy outside a truncated CT, burnt-in labels. A normalised
measure lets each of them pull the pose. `robust_weights` gives them
weight 0 (without gradient); registration calls it once per pyramid level
(`DiffRegLogic.registration.engine.reweighted_level`, constant
`REGISTRATION_TUKEY_C`), while a measure from `configure_measure` with
``robust="tukey"`` re-estimates the weights at every call:

1. fit the X-ray as an affine function of the DRR, ``x ~ alpha + beta d``,
   by weighted least squares over the mask (`affine_fit`), iterated
   ``IRLS_ITERATIONS`` times with the weights of step 3 (a first,
   unweighted fit is pulled by the outliers themselves);
2. residual ``r = x - alpha - beta d``; robust scale
   ``s = MAD_TO_SIGMA * median|r - median(r)|`` over the pixels of nonzero
   mask weight (plain median, not mask-weighted);
3. Tukey's biweight ``w = (1 - (z / TUKEY_C)**2)**2`` for ``|z| < TUKEY_C``,
   else 0, with ``z = (r - median(r)) / s``. ``TUKEY_C = 4.685`` gives 95 %
   efficiency on Gaussian residuals; a pixel further than 4.685 robust
   standard deviations from the fit gets weight 0.

The base measure is then evaluated with ``mask * w`` (``w`` detached), so it
stays a `Measure` with the base's residual for Levenberg-Marquardt. A
misaligned DRR gives a broad residual and a large scale, so misalignment
itself is not rejected; what stays far off the fit at every pose is.

``nuisance="scatter"`` scores in the intensity domain instead: the X-ray
as X_I = exp(-kappa (X - min X)) against its weighted linear least-squares
fit by the DRR's scatter/heel/gain regressors
(`DiffRegLogic.similarity.nuisance`); with both, the Tukey weights come
from the relative residual (X_I - fit) / X_I and the fit is redone with
them, so outliers bend neither the fit nor the score.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import InputError
from .measure import Measure, as_measure

TUKEY_C = 4.685
"""Tukey biweight constant, in robust standard deviations (95 % efficiency for Gaussian residuals)."""
REGISTRATION_TUKEY_C = 20.0
"""The constant registration weighs with (once per pyramid level, `registration.engine.reweighted_level`): only
gross outliers (metal, anatomy the CT lacks) lose their weight. Measured on the phantom's bench (6 seeded starts
within 10 deg / 20 mm, 128 px, with the footprint mask): instruments / truncation succeeded 4/6 / 3/6 with 4.685,
5/6 / 5/6 with 10 and 6/6 / 6/6 with 20; near the answer a constant of 4.685 also rejects the edges a few tenths
of a millimetre off, which hold the pose."""
MAD_TO_SIGMA = 1.4826
"""Median absolute deviation -> standard deviation of a Gaussian (1 / Phi^-1(3/4))."""
IRLS_ITERATIONS = 3
"""Affine fit -> weights rounds per evaluation (the last round's weights are used)."""
SCALE_FLOOR = 0.05
"""Smallest robust scale, relative to the X-ray's standard deviation over the mask. Near the optimum of a
clean X-ray the residual is interpolation error concentrated on the edges, the very pixels that carry the
pose; a MAD of it collapses and Tukey would reject them. With the floor a residual below
``TUKEY_C * SCALE_FLOOR`` (~0.23) standard deviations of the X-ray keeps a weight above 0."""

MAX_WARM_FITS = 32
"""kappas a configured measure remembers for warm starts (one per X-ray, batch and image size)."""


def _broadcast(drr: torch.Tensor, xray, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d, x, w) as (B, H, W) in the DRR's float dtype (at least float32); pixels of weight 0 set to 0 in x."""
    if not isinstance(drr, torch.Tensor) or not drr.is_floating_point() or drr.dim() not in (2, 3):
        raise InputError(f"drr must be a floating-point tensor (H, W) or (B, H, W), got "
                         f"{getattr(drr, 'shape', type(drr).__name__)}")
    dtype = torch.promote_types(drr.dtype, torch.float32)
    d = drr.detach().to(dtype).reshape(-1, *drr.shape[-2:])
    x = torch.as_tensor(xray).to(device=d.device, dtype=dtype)
    if x.shape[-2:] != d.shape[-2:] or x.dim() not in (2, 3):
        raise InputError(f"xray has shape {tuple(x.shape)} but the DRR is {tuple(drr.shape)}: the image sizes (H, W) "
                         "must match")
    x = x.reshape(-1, *x.shape[-2:])
    if mask is None:
        w = torch.ones_like(d[:1])
    else:
        w = torch.as_tensor(mask).to(device=d.device, dtype=dtype)
        if w.shape[-2:] != d.shape[-2:]:
            raise InputError(f"mask has shape {tuple(w.shape)} but the images are {tuple(d.shape[-2:])} (H, W)")
        w = w.reshape(-1, *w.shape[-2:])
    batch = max(d.shape[0], x.shape[0], w.shape[0])
    for name, t in (("drr", d), ("xray", x), ("mask", w)):
        if t.shape[0] not in (1, batch):
            raise InputError(f"batch sizes do not match: {name} has {t.shape[0]} images where {batch} are expected")
    d, x, w = d.expand(batch, -1, -1), x.expand(batch, -1, -1), w.expand(batch, -1, -1)
    inside = w > 0
    x = torch.where(inside, x, torch.zeros((), dtype=dtype, device=d.device))
    d = torch.where(inside, d, torch.zeros((), dtype=dtype, device=d.device))
    return d, x, w


def affine_fit(drr: torch.Tensor, xray: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``xray ~ alpha + beta drr`` per image: (alpha (B,), beta (B,)).

    All (B, H, W). A constant DRR (no variance under the weights) gives
    beta = 0 and alpha = the weighted mean of the X-ray.
    """
    p = weights / weights.sum((1, 2), keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    mean_d, mean_x = (p * drr).sum((1, 2)), (p * xray).sum((1, 2))
    dd = drr - mean_d[:, None, None]
    var = (p * dd * dd).sum((1, 2))
    cov = (p * dd * (xray - mean_x[:, None, None])).sum((1, 2))
    tiny = torch.finfo(var.dtype).eps ** 2 * (var + mean_d ** 2) + 1e-300
    beta = torch.where(var > tiny, cov / var.clamp_min(tiny), torch.zeros_like(cov))
    return mean_x - beta * mean_d, beta


def masked_median(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) median of each (H, W) image over its ``inside`` pixels (the lower middle value for an even count)."""
    flat = torch.where(inside, values, torch.full_like(values, float("inf"))).flatten(1)
    count = inside.flatten(1).sum(1).clamp_min(1)
    ordered = flat.sort(1).values
    return ordered.gather(1, ((count - 1) // 2)[:, None])[:, 0]


def tukey_weights(residual: torch.Tensor, inside: torch.Tensor, floor: torch.Tensor,
                  c: float = TUKEY_C) -> torch.Tensor:
    """Tukey biweight (B, H, W) in [0, 1] of residuals (B, H, W), scale from the MAD over ``inside``.

    ``floor`` (B,) is the smallest scale (intensity units); 0 outside ``inside``.
    """
    centre = masked_median(residual, inside)
    deviation = (residual - centre[:, None, None]).abs()
    scale = torch.maximum(MAD_TO_SIGMA * masked_median(deviation, inside), floor)
    z = deviation / (c * scale[:, None, None])
    w = (1 - z * z).clamp_min(0) ** 2
    return torch.where(inside, w, torch.zeros_like(w))


def robust_weights(drr: torch.Tensor, xray, mask=None, iterations: int = IRLS_ITERATIONS,
                   c: float = TUKEY_C) -> torch.Tensor:
    """Tukey weights (B, H, W) in [0, 1] of the X-ray's residual from an affine fit to the DRR (no gradient).

    ``drr`` (B, H, W) or (H, W); ``xray`` and ``mask`` (H, W) or (B, H, W);
    see the module docstring for the fit and the constants. 0 where the mask
    is 0; the mask's own weights are not included.
    """
    with torch.no_grad():
        d, x, w0 = _broadcast(drr, xray, mask)
        inside = w0 > 0
        sd = torch.sqrt(((x - (x * w0).sum((1, 2), keepdim=True) / w0.sum((1, 2), keepdim=True)) ** 2 * w0).sum((1, 2))
                        / w0.sum((1, 2)))
        floor = SCALE_FLOOR * sd + torch.finfo(d.dtype).tiny
        weights = torch.ones_like(d)
        for _ in range(max(1, int(iterations))):
            alpha, beta = affine_fit(d, x, w0 * weights)
            residual = x - alpha[:, None, None] - beta[:, None, None] * d
            weights = tukey_weights(residual, inside, floor, c)
        return weights


class _Configured:
    """The similarity (or residual) of ``base`` with the nuisance model and the robust weights applied."""

    def __init__(self, base, robust: str, nuisance: str):
        self.base, self.robust, self.nuisance = base, robust, nuisance
        # (X-ray id, B, H, W, dtype, device) -> (weak reference to the X-ray, last kappa (B,)): warm starts
        self.kappas: dict[tuple, tuple] = {}

    def _fit(self, d: torch.Tensor, x: torch.Tensor, xray, weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """`fit_scatter_model` with kappa warm-started from the last evaluation on the same X-ray and size."""
        from .nuisance import fit_scatter_model

        key = (id(xray), *d.shape, d.dtype, d.device)
        seen, start = self.kappas.get(key, (None, None))
        if seen is None or seen() is not xray:  # another X-ray (or one freed and its id reused): a cold search
            start = None
        params = fit_scatter_model(d, x, weights, kappa_start=start, basis=basis)
        if isinstance(xray, torch.Tensor):
            if start is None and len(self.kappas) >= MAX_WARM_FITS:
                self.kappas.clear()
            self.kappas[key] = (weakref.ref(xray), params[:, 0].clone())
        return params

    def _intensity(self, drr: torch.Tensor, xray, mask):
        """(fitted model intensity with autograd, X-ray intensity X_I, weights) (B, H, W) for ``nuisance="scatter"``.

        The weights are the mask times `nuisance.relative_weights` (and, with
        ``robust="tukey"``, times Tukey weights of the relative residual
        (X_I - fit) / X_I ~ the log-domain residual, `IRLS_ITERATIONS`
        rounds, each with a refit, kappa included), so outliers bend
        neither the fit nor the score.
        """
        from .nuisance import (RELATIVE_FLOOR, _inputs, apply_scatter_model, fitted_intensity, relative_weights,
                               scatter_basis, target_intensity)

        with torch.no_grad():
            d, x, w0 = _inputs(drr, xray, mask)
        basis = scatter_basis(drr.reshape(-1, *d.shape[-2:]).to(d.dtype)).expand(*d.shape, -1)  # with autograd
        with torch.no_grad():
            fixed = basis.detach()
            params = self._fit(d, x, xray, w0, fixed)
            weights = w0
            if self.robust == "tukey":
                inside = w0 > 0
                floor = SCALE_FLOOR * params[:, 0] * _weighted_std(x, w0) + torch.finfo(d.dtype).tiny
                for _ in range(IRLS_ITERATIONS):
                    target = target_intensity(x, params, d)
                    residual = (target - apply_scatter_model(d, params, fixed)) / target.clamp_min(RELATIVE_FLOOR)
                    weights = w0 * tukey_weights(residual, inside, floor)
                    params = self._fit(d, x, xray, weights, fixed)
            target = target_intensity(x, params, d)
            weights = relative_weights(target, weights)
        fit = fitted_intensity(drr, target, weights, basis)
        return fit, target, weights

    def prepare(self, drr: torch.Tensor, xray, mask):
        """(image to score with autograd, image to score it against, mask for the base measure) for one evaluation."""
        if self.nuisance == "scatter":
            return self._intensity(drr, xray, mask)
        weights = robust_weights(drr, xray, mask)
        return drr, xray, weights if mask is None else weights * _as_weights(mask, weights)

    def __call__(self, drr: torch.Tensor, xray, mask=None) -> torch.Tensor:
        mapped, target, weights = self.prepare(drr, xray, mask)
        return self.base(mapped, target, weights)


def _weighted_std(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) standard deviation of (B, H, W) values under weights (B, H, W)."""
    p = w / w.sum((1, 2), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mean = (p * values).sum((1, 2), keepdim=True)
    return torch.sqrt((p * (values - mean) ** 2).sum((1, 2)))


def _as_weights(mask, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask).to(device=like.device, dtype=like.dtype)


def configure_measure(measure, options) -> Measure:
    """The measure a registration uses: ``measure`` with ``options.robust`` and ``options.nuisance`` applied.

    ``measure`` is a `Measure` (or anything `as_measure` accepts: a name, a
    callable); ``options`` a `RegistrationOptions` (only ``robust`` and
    ``nuisance`` are read). With ``robust == "none"`` and ``nuisance ==
    "none"`` the measure comes back unchanged (the same object when a
    `Measure` was given). Otherwise a new `Measure` of the same dtype named
    e.g. ``"zncc+tukey+scatter"`` whose function and residual (when the base
    has one) evaluate the base with mask x robust weights on the DRR and the
    X-ray, or, with ``nuisance="scatter"``, on the fitted model intensity
    and X_I (weights x `nuisance.relative_weights`), re-estimated at every
    call; so ``||residual||**2 == 1 - similarity`` carries over from the
    base.
    """
    from ..registration.options import NUISANCES, ROBUST_WEIGHTS

    robust = getattr(options, "robust", None)
    nuisance = getattr(options, "nuisance", None)
    if robust not in ROBUST_WEIGHTS:
        raise InputError(f"unknown robust weighting {robust!r} (robust); choose one of {', '.join(ROBUST_WEIGHTS)}")
    if nuisance not in NUISANCES:
        raise InputError(f"unknown nuisance model {nuisance!r} (nuisance); choose one of {', '.join(NUISANCES)}")
    measure = as_measure(measure)
    if robust == "none" and nuisance == "none":
        return measure
    function = _Configured(measure.function, robust, nuisance)
    residual = None if measure.residual is None else _Configured(measure.residual, robust, nuisance)
    suffix = "".join(f"+{part}" for part in (robust, nuisance) if part != "none")
    return Measure(function, residual, measure.dtype, f"{measure.name}{suffix}")
