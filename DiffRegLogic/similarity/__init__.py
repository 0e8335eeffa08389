"""Image similarity between a DRR and an X-ray: differentiable, batched, masked.

Every measure takes

* ``drr``: the rendered image, a floating tensor (B, H, W) or (H, W),
* ``xray``: the X-ray, (H, W) or (B, H, W), broadcast against ``drr``,
* ``mask``: ``None`` or (H, W) / (B, H, W) weights in [0, 1] (bool or float);
  pixels of weight 0 are ignored (collimator borders, labels, burnt-out
  areas). Their values never enter a result, so they may hold NaN/inf,

and returns a (B,) tensor (B = 1 for 2D inputs) in the dtype of ``drr``,
**higher = more similar**. Gradients flow to ``drr`` (and ``xray``) through
torch autograd. The work is done with whole-image tensor operations (filters
as sums of shifted slices, patch sums with ``index_add``), never with Python
loops over pixels.

Intensities have no unit here: a DRR is a line integral of attenuation, an
X-ray is detector counts or log-converted counts. The normalised measures
(ZNCC and its variants, gradient NCC, SSIM/CSS on z-scored images, MI on
min-max normalised images) are therefore invariant to a positive affine
change of either image's intensities; ``mse_residual`` is not.

Constant images. A DRR whose rays all miss the CT is constant; its standard
deviation is 0 and ZNCC would be 0/0. Every variance that divides is
regularised as ``var + eps`` with ``eps = u**2 * mean(x**2) + EPS_ABS``
(weighted moments, intensity units squared), u the machine epsilon of the
computation dtype (1.2e-7 for float32, 2.2e-16 for float64; half precision
is computed in float32) and ``EPS_ABS = 1e-20``. This changes a real image's
ZNCC by a relative u**2 * (1 + mean**2 / var): invisible, so identical images
give 1 to float precision. For a constant image the deviations from the mean
are one number (0 or a rounding error) at every pixel, so their covariance
with any image vanishes and ZNCC is ~0; eps only removes the 0/0 and keeps
``(var + eps)**-1.5`` in autograd finite even in float32. The gradient of a
normalised measure at a constant image is genuinely unbounded (any tiny
pattern added to it has correlation of order 1), so it is finite but may be
large. The range in ``mutual_information`` is regularised the same way
(``u * (|max| + |min|) + 1e-10``).

Residuals for least squares (Levenberg-Marquardt): ``RESIDUALS[name](drr,
xray, mask)`` returns r (B, M) with ``(r**2).sum(-1) == 1 - similarity``
exactly (for "mse": 1 minus the weighted mean squared error).

Modules: `inputs` (checks, broadcasting, regularised variances), `ncc`
(global, patch and multiscale ZNCC), `gradient` (gradient correlation),
`structural` (SSIM, CSS), `information` (mutual information),
`squared_error` (MSE), `metrics`
(`image_metrics` for reports), `registry` (the name tables), `measure` (the
plug point: `Measure`, `as_measure`), `robust` (Tukey weights against
outliers; `configure_measure`, the measure a registration uses), `nuisance`
(scatter and heel fitted at every evaluation).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".inputs": "EPS_ABS",
    ".structural": "SSIM_K1 SSIM_K2 SSIM_C1 SSIM_C2 ssim css",
    ".ncc": "zncc patch_zncc multiscale_zncc default_patch_size zncc_residual patch_zncc_residual "
            "multiscale_zncc_residual",
    ".gradient": "gradient_ncc gradient_ncc_residual",
    ".information": "mutual_information",
    ".squared_error": "mse mse_residual",
    ".metrics": "image_metrics",
    ".registry": "SIMILARITIES RESIDUALS get_similarity get_residual",
    ".measure": "Measure as_measure BUILTIN_DTYPE",
    ".robust": "TUKEY_C MAD_TO_SIGMA configure_measure robust_weights affine_fit",
    ".nuisance": "fit_scatter_model apply_scatter_model",
    "..filters": "gaussian_blur",
})
__all__ = sorted(__getattr__.table)
