"""Scatter, heel effect and gain of real X-rays, fitted in the intensity domain at every evaluation.

A detector sees the primary ``g P`` (``P = exp(-L)``, L the line integral
the DRR computes, g the tube's fluence, a ramp across the detector: the heel
effect) plus scatter, which is the primary blurred by a broad kernel
(a scatter-superposition model). In intensity all of this is *linear* in
a few images made from the DRR, the regressors (`scatter_basis`):

    I ~ c + a P + h_u u P + h_v v P + sum_j b_j (G_j * P)

with (u, v) in [-1, 1] across the detector columns and rows (0 at the image
centre) and G_j Gaussian kernels of sigma ``KERNEL_FRACTIONS`` x the longer
image side (in pixels, edges replicated; a scatter kernel between or near
them is matched by their combination). c is a dark offset, a the gain,
h_u, h_v the heel ramps, b_j the scatter amplitudes. Apart from P itself
(and P times a ramp) every regressor is low-pass, so a misalignment, which
moves the edges of P, is not absorbed (the tests scan a pose to show it).

The X-ray arrives as a line integral ``X`` with an unknown offset and scale
(``X = beta (-log(I / I0)) + alpha``). It is brought back to intensity as
``X_I = exp(-kappa (X - x_ref))`` (`xray_intensity`) with ``x_ref`` the
smallest X over the mask (so X_I is in (0, 1] and the offset, a gain in
intensity, is absorbed by ``a``) and the exponent ``kappa = 1 / beta`` (1
for an exact line integral) chosen per evaluation to maximise the fit
(golden-section search in log kappa, `KAPPA_SEARCH` around
``std(L) / std(X)``, no gradient: at the maximum the similarity does not
change to first order with kappa).

The least-squares weights are the mask times ``1 / max(X_I, RELATIVE_FLOOR)**2``
(`relative_weights`): a residual relative to the intensity is the
log-domain residual, so dense regions count as in a log-domain ZNCC (with
unweighted intensities the bright regions dominate and registration loses
accuracy). `fit_scatter_model` solves the weighted linear least squares (normal
equations of the column-normalised regressors, batched) and returns the
parameters; `fitted_intensity` is the same fit with autograd through the
DRR (variable projection: the coefficients are a differentiable function
of the DRR). `DiffRegLogic.similarity.robust.configure_measure` scores the
fitted model against X_I with the base measure; for ZNCC this is the
multiple correlation ``R = sqrt(1 - SSE / SST)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..filters import gaussian_blur

KERNEL_FRACTIONS = (1 / 16, 1 / 8, 1 / 4)
"""Sigmas of the scatter kernels G_j, as fractions of the longer image side (pixels at every pyramid level)."""
N_REGRESSORS = 4 + len(KERNEL_FRACTIONS)
"""Columns of `scatter_basis`: 1, P, u P, v P, G_j * P."""
N_PARAMETERS = 2 + N_REGRESSORS
"""(kappa, x_ref, c, a, h_u, h_v, b_1 .. b_J); see the module docstring."""
KAPPA_SEARCH = 4.0
"""kappa is searched in [k0 / KAPPA_SEARCH, k0 * KAPPA_SEARCH], k0 = std(L) / std(X) over the mask."""
KAPPA_ITERATIONS = 24
"""Golden-section steps in log kappa (the bracket shrinks to 0.618**24 ~ 1e-5 of its width)."""
WARM_KAPPA_SPAN = 1.05
"""A warm-started search (`configure_measure` keeps the last kappa per X-ray and image size) looks within this factor."""
WARM_KAPPA_GRID = 0.02
"""Grid (in log kappa) the warm bracket's centre is snapped to."""
WARM_KAPPA_ITERATIONS = 10
"""Golden-section steps of a warm-started search (0.618**10 x 0.098 ~ 8e-4 in log kappa)."""
RELATIVE_FLOOR = 1e-3
"""The least-squares weights are ``mask / max(X_I, RELATIVE_FLOOR)**2`` (`relative_weights`): a residual relative to
the intensity, as in the log domain (d log I = dI / I), so dense regions count as much as bright ones; X_I below
the floor (0.1 % of the brightest pixel) stops gaining weight, so photon-starved pixels do not dominate."""
RIDGE = 1e-10
"""Ridge on the normal equations of the column-normalised regressors, relative to 1 (keeps collinear kernels solvable)."""


def _grid(height: int, width: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) (H, W): columns and rows mapped to [-1, 1] (0 at the image centre; 0 for a single column/row)."""
    u = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device) if width > 1 else torch.zeros(1, dtype=dtype, device=device)
    v = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device) if height > 1 else torch.zeros(1, dtype=dtype, device=device)
    return u[None, :].expand(height, width), v[:, None].expand(height, width)


MIN_KERNEL_PX = 2.0
"""Kernels narrower than this many pixels (coarse pyramid levels) are left out (their column is 0): a blur that
small is hardly lower in frequency than the primary itself and would absorb misalignment."""


def kernel_sigmas(height: int, width: int) -> list[float | None]:
    """Sigmas (pixels) of the scatter kernels G_j for an (H, W) image; None for a kernel left out (`MIN_KERNEL_PX`)."""
    sigmas = [f * max(height, width) for f in KERNEL_FRACTIONS]
    return [s if s >= MIN_KERNEL_PX else None for s in sigmas]


def scatter_basis(drr: torch.Tensor) -> torch.Tensor:
    """Regressors (B, H, W, `N_REGRESSORS`) of a DRR L (B, H, W) or (H, W): 1, P, uP, vP, G_j * P, P = exp(-L).

    Differentiable w.r.t. ``drr``; same dtype.
    """
    d = drr.reshape(-1, *drr.shape[-2:])
    height, width = d.shape[-2:]
    u, v = _grid(height, width, d.dtype, d.device)
    primary = torch.exp(-d)
    columns = [torch.ones_like(primary), primary, u * primary, v * primary]
    columns += [torch.zeros_like(primary) if s is None else gaussian_blur(primary, s) for s in kernel_sigmas(height, width)]
    return torch.stack(columns, -1)


def xray_intensity(xray: torch.Tensor, kappa: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """X_I = exp(-kappa (X - x_ref)) (B, H, W) of the X-ray line integral (B, H, W); kappa, x_ref (B,)."""
    return torch.exp(-(kappa[:, None, None] * (xray - x_ref[:, None, None])).clamp(min=-700.0, max=700.0))


def _normal(basis: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(column scales (B, M), normal matrix (B, M, M) of the scaled columns, weighted scaled basis (B, N, M))."""
    a = basis.flatten(1, 2)
    aw = a * w.flatten(1)[..., None]
    scale = torch.sqrt((aw * a).sum(1)).clamp_min(torch.finfo(a.dtype).tiny)  # weighted column norms
    a_scaled, aw_scaled = a / scale[:, None, :], aw / scale[:, None, :]
    normal = torch.einsum("bnp,bnq->bpq", aw_scaled, a_scaled)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return scale, normal + RIDGE * eye, aw_scaled


def relative_weights(target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, H, W) weights ``w / max(X_I, RELATIVE_FLOOR)**2`` of an intensity target (B, H, W), scaled to max 1."""
    r = w / target.clamp_min(RELATIVE_FLOOR) ** 2
    return r / r.flatten(1).amax(1).clamp_min(torch.finfo(r.dtype).tiny)[:, None, None]


def _profile(basis, w, target) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficients (B, M) of the weighted least-squares fit of target by basis, 1 - R^2 (B,))."""
    scale, normal, aw_scaled = _normal(basis, w)
    y = target.flatten(1)
    rhs = torch.einsum("bnp,bn->bp", aw_scaled, y)
    coef = torch.linalg.solve(normal, rhs[..., None])[..., 0]
    p = w.flatten(1) / w.flatten(1).sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mean = (p * y).sum(1, keepdim=True)
    sst = (p * (y - mean) ** 2).sum(1).clamp_min(torch.finfo(y.dtype).tiny)
    # SSE = y'Wy - rhs'coef at the least-squares optimum (the ridge's share is ~RIDGE |coef|^2, negligible)
    total = w.flatten(1).sum(1).clamp_min(torch.finfo(w.dtype).tiny)
    sse = ((p * y * y).sum(1) - (rhs * coef).sum(1) / total).clamp_min(0)
    return coef / scale, sse / sst


def _std(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    p = w / w.sum((1, 2), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mean = (p * values).sum((1, 2), keepdim=True)
    return torch.sqrt((p * (values - mean) ** 2).sum((1, 2)))


def x_reference(xray: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) the smallest X-ray line integral over the pixels of nonzero weight (0 if there are none)."""
    inside = w > 0
    low = torch.where(inside, xray, torch.full_like(xray, float("inf"))).flatten(1).amin(1)
    return torch.where(torch.isfinite(low), low, torch.zeros_like(low))


def best_kappa(basis: torch.Tensor, d: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
               x_ref: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the exponent kappa that minimises 1 - R^2 of the fit of X_I by ``basis`` (golden section, no gradient).

    Searched in log kappa over [k0 / `KAPPA_SEARCH`, k0 * `KAPPA_SEARCH`]
    (k0 = std(L) / std(X)), or, with ``start`` (B,) (the previous
    evaluation's kappa), over [start / `WARM_KAPPA_SPAN`, start *
    `WARM_KAPPA_SPAN`] in `WARM_KAPPA_ITERATIONS` steps, falling back to the
    full search when the optimum lands in the outer tenth of that bracket.
    """
    with torch.no_grad():
        if start is not None:
            # the bracket's centre is snapped to a grid, so nearby evaluations search the same bracket and get the
            # same kappa (no jitter between the evaluations of a finite difference or a line search)
            centre = torch.round(torch.log(start.to(d.dtype)) / WARM_KAPPA_GRID) * WARM_KAPPA_GRID
            lo, hi = centre - math.log(WARM_KAPPA_SPAN), centre + math.log(WARM_KAPPA_SPAN)
            t = _golden(basis, x, w, x_ref, lo, hi, WARM_KAPPA_ITERATIONS)
            if bool(((t - centre).abs() < 0.8 * math.log(WARM_KAPPA_SPAN)).all()):
                return torch.exp(t)
        k0 = _std(d, w) / _std(x, w).clamp_min(torch.finfo(x.dtype).tiny)
        k0 = torch.where(torch.isfinite(k0) & (k0 > 0), k0, torch.ones_like(k0))
        lo, hi = torch.log(k0) - math.log(KAPPA_SEARCH), torch.log(k0) + math.log(KAPPA_SEARCH)
        return torch.exp(_golden(basis, x, w, x_ref, lo, hi, KAPPA_ITERATIONS))


def _golden(basis, x, w, x_ref, lo, hi, iterations: int) -> torch.Tensor:
    """(B,) log kappa minimising the profile 1 - R^2 over [lo, hi] (B,) by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2

    def cost(t):
        y = xray_intensity(x, torch.exp(t), x_ref)
        return _profile(basis, relative_weights(y, w), y)[1]

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = cost(a), cost(b)
    for _ in range(int(iterations)):
        left = fa < fb  # the minimum lies in [lo, b]: drop (b, hi]
        hi = torch.where(left, b, hi)
        lo = torch.where(left, lo, a)
        new_a = torch.where(left, hi - ratio * (hi - lo), b)
        new_b = torch.where(left, a, lo + ratio * (hi - lo))
        ft = cost(torch.where(left, new_a, new_b))
        fa, fb = torch.where(left, ft, fb), torch.where(left, fa, ft)
        a, b = new_a, new_b
    return (lo + hi) / 2


def _inputs(drr, xray, mask):
    """(d, x, w) (B, H, W): the DRR detached and unmasked (scatter comes from every pixel), X-ray and weights."""
    from .robust import _broadcast

    _, x, w = _broadcast(drr, xray, mask)
    d = drr.detach().to(x.dtype).reshape(-1, *drr.shape[-2:]).expand(x.shape[0], -1, -1)
    return d, x, w


def fit_scatter_model(drr: torch.Tensor, xray, mask=None, kappa=None,
                      kappa_start: torch.Tensor | None = None, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Parameters (B, `N_PARAMETERS`) of the scatter/heel/gain model fitted to the X-ray (no gradient).

    ``drr`` (B, H, W) or (H, W) line integrals; ``xray`` (H, W) or (B, H, W)
    line integrals (any offset and scale); ``mask`` None or (H, W) /
    (B, H, W) weights in [0, 1], the least-squares weights. ``kappa`` None
    (searched, `best_kappa`, warm-started from ``kappa_start`` (B,) when
    given) or a number / (B,) tensor to hold it fixed.
    ``basis`` the `scatter_basis` of ``drr`` when already computed. Row
    layout: (kappa, x_ref, c, a, h_u, h_v, b_1 .. b_J).
    """
    with torch.no_grad():
        d, x, w = _inputs(drr, xray, mask)
        basis = scatter_basis(d) if basis is None else basis.detach().to(d.dtype).expand(*d.shape, -1)
        x_ref = x_reference(x, w)
        if kappa is None:
            start = None if kappa_start is None or kappa_start.shape != (d.shape[0],) else kappa_start
            k = best_kappa(basis, d, x, w, x_ref, start)
        else:
            k = torch.as_tensor(kappa, dtype=d.dtype, device=d.device).reshape(-1).expand(d.shape[0]).clone()
        y = xray_intensity(x, k, x_ref)
        coef, _ = _profile(basis, relative_weights(y, w), y)
        return torch.cat([k[:, None], x_ref[:, None], coef], 1)


def _check_params(params: torch.Tensor) -> None:
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != N_PARAMETERS:
        raise InputError(f"scatter model parameters must be a tensor (B, {N_PARAMETERS}) from fit_scatter_model, got "
                         f"{tuple(getattr(params, 'shape', ())) or type(params).__name__}")


def apply_scatter_model(drr: torch.Tensor, params: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """The model intensity (B, H, W) of a DRR (B, H, W) or (H, W) under fixed parameters (B, 9); autograd to ``drr``.

    ``basis``: the DRR's `scatter_basis` when already computed.
    """
    _check_params(params)
    basis = scatter_basis(drr) if basis is None else basis
    p = params.to(dtype=basis.dtype, device=basis.device)
    return (basis * p[:, None, None, 2:]).sum(-1)


def target_intensity(xray, params: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """X_I (B, H, W) of the X-ray line integral under the (kappa, x_ref) of ``params`` (B, 9), dtype of ``like``."""
    _check_params(params)
    x = torch.as_tensor(xray).to(device=like.device, dtype=like.dtype)
    x = x.reshape(-1, *x.shape[-2:]).expand(params.shape[0], -1, -1)
    p = params.to(dtype=like.dtype, device=like.device)
    return xray_intensity(x, p[:, 0], p[:, 1])


def fitted_intensity(drr: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                     basis: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares projection (B, H, W) of ``target`` (B, H, W) on `scatter_basis` of ``drr``, autograd to ``drr``.

    ``weights`` (B, H, W) >= 0 are the least-squares weights (detached).
    The coefficients are solved in closed form inside autograd, so the
    gradient is that of the variable-projection residual. ``basis``: the
    DRR's `scatter_basis` (with autograd) when already computed.
    """
    basis = scatter_basis(drr) if basis is None else basis
    w = weights.detach().to(basis.dtype).expand(basis.shape[:-1])
    coef, _ = _profile(basis, w, target.detach().to(basis.dtype).expand(basis.shape[:-1]))
    return (basis * coef[:, None, None, :]).sum(-1)
