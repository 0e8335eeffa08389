"""Losses of the pose network: the decoder's structure loss and the pose losses.

* `sobel_magnitude`: the decoder's target, the image-gradient (structure)
  map of the network input: 3x3 Sobel derivatives with replicate padding,
  ``sqrt(gx^2 + gy^2)``, divided per image by its maximum, so it lies in
  [0, 1] (an all-flat image gives zeros).
* `ssim`: structural similarity (Wang et al. 2004) with a Gaussian window
  (default 11 taps, sigma 1.5), data range 1 (``C1 = 0.01^2``,
  ``C2 = 0.03^2``), averaged over the *valid* part of the image (no padding),
  one value per image.
* `structure_loss`: ``mean |r - t| + mean(1 - SSIM(r, t))`` over the batch,
  the structure-aware loss of the regularised autoencoder (part B).
* `pose_loss`: ``"poster"`` is the poster's code's loss, the L2 norm of
  the difference of the rotation vectors in degrees plus the L2 norm of the
  translation difference in mm; ``"geodesic"`` is ``length_mm`` times the
  geodesic angle (rad) of ``R_pred^T R_true`` plus the translation norm (a
  rotation by theta moves points at ``length_mm`` from the centre by about
  ``length_mm * theta`` mm, as DiffPose/xvr weigh it). Both are batch means
  in "mm-like" units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from DiffRegLogic.errors import InputError
from DiffRegLogic.learning.rotations import geodesic_angle, matrix_to_rotation_vector

__all__ = ["sobel_magnitude", "ssim", "structure_loss", "pose_loss", "POSE_LOSSES"]

POSE_LOSSES = ("poster", "geodesic")
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a floating-point tensor of shape (B, C, H, W); got {shape}")


def _norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last axis with gradient 0 (not NaN) at the zero vector."""
    s2 = (x * x).sum(-1)
    positive = s2 > 0
    return torch.where(positive, torch.where(positive, s2, torch.ones_like(s2)).sqrt(), torch.zeros_like(s2))


def sobel_magnitude(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalised Sobel gradient magnitude, (B, C, H, W) -> (B, C, H, W) in [0, 1].

    Each channel of each image is filtered with the 3x3 Sobel kernels
    (``[-1, 0, 1]`` derivative times ``[1, 2, 1]`` smoothing, replicate
    padding), ``m = sqrt(gx^2 + gy^2)`` and then ``m / (max m + eps)``.
    Differentiable (gradient 0 where the image is locally flat).
    """
    _check_images(images, "images")
    b, c, h, w = images.shape
    kx = torch.tensor(_SOBEL_X, dtype=images.dtype, device=images.device)
    kernels = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3): d/dcol, d/drow
    flat = images.reshape(b * c, 1, h, w)
    grads = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = _norm(grads.permute(0, 2, 3, 1))[:, None]  # (B*C, 1, H, W)
    peak = magnitude.amax(dim=(-2, -1), keepdim=True)
    return (magnitude / (peak + eps)).reshape(b, c, h, w)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, (B, C, H, W) x 2 -> (B,).

    Local means, variances and covariance are Gaussian-weighted over a
    ``window x window`` neighbourhood (sigma in pixels), evaluated where the
    window fits inside the image; ``SSIM = (2 mu_a mu_b + C1)(2 cov + C2) /
    ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))`` with ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``, L = ``data_range``; the map is averaged over
    channels and positions. 1 for identical images.
    """
    _check_images(a, "ssim input a")
    _check_images(b, "ssim input b")
    if a.shape != b.shape:
        raise InputError(f"ssim needs two images of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (isinstance(window, int) and window >= 3 and window % 2 == 1):
        raise InputError(f"ssim window must be an odd integer >= 3 (7 or 11 are usual); got {window!r}")
    if not (sigma > 0 and data_range > 0):
        raise InputError(f"ssim sigma and data_range must be > 0; got {sigma}, {data_range}")
    n, c, h, w = a.shape
    if min(h, w) < window:
        raise InputError(f"ssim window {window} does not fit a {h} x {w} image: use a smaller window (e.g. 7)")
    kernel = _gaussian_window(window, sigma, a.dtype, a.device)[None, None]
    x = a.reshape(n * c, 1, h, w)
    y = b.reshape(n * c, 1, h, w)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N*C, 5, H, W)
    moments = F.conv2d(stacked, kernel.expand(5, 1, window, window), groups=5)
    mu_x, mu_y, exx, eyy, exy = moments.unbind(1)
    var_x = exx - mu_x * mu_x
    var_y = eyy - mu_y * mu_y
    cov = exy - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return value.reshape(n, -1).mean(-1)


def structure_loss(reconstruction: torch.Tensor, target: torch.Tensor, *, window: int = 11) -> torch.Tensor:
    """Scalar ``mean |r - t| + mean_b (1 - SSIM_b(r, t))``; both (B, 1, H, W) in [0, 1].

    The decoder's loss against ``sobel_magnitude(input)``. 0 for a perfect
    reconstruction. ``window`` is the SSIM window (shrunk to fit images
    smaller than it, down to 3).
    """
    _check_images(reconstruction, "reconstruction")
    _check_images(target, "target")
    if reconstruction.shape != target.shape:
        raise InputError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} "
                         "must have the same shape")
    side = min(reconstruction.shape[-2:])
    fitted = min(window, side if side % 2 == 1 else side - 1)
    if fitted < 3:
        raise InputError(f"structure_loss needs images of at least 3 x 3 pixels; got {tuple(target.shape[-2:])}")
    l1 = (reconstruction - target).abs().mean()
    return l1 + (1.0 - ssim(reconstruction, target, window=fitted)).mean()


def _check_pose_batch(rotation: torch.Tensor, translation: torch.Tensor, name: str) -> None:
    if not isinstance(rotation, torch.Tensor) or rotation.ndim != 3 or tuple(rotation.shape[1:]) != (3, 3):
        raise InputError(f"{name} rotation must be (B, 3, 3); got "
                         f"{tuple(rotation.shape) if isinstance(rotation, torch.Tensor) else type(rotation).__name__}")
    if not isinstance(translation, torch.Tensor) or tuple(translation.shape) != (rotation.shape[0], 3):
        got = tuple(translation.shape) if isinstance(translation, torch.Tensor) else type(translation).__name__
        raise InputError(f"{name} translation must be (B, 3) mm with B = {rotation.shape[0]}; got {got}")


def pose_loss(pred_rotation: torch.Tensor, pred_translation_mm: torch.Tensor, true_rotation: torch.Tensor,
              true_translation_mm: torch.Tensor, kind: str = "poster", length_mm: float = 100.0) -> torch.Tensor:
    """Scalar pose loss, the batch mean of a rotation term plus ``||t_pred - t_true||_2`` (mm).

    Rotations (B, 3, 3), translations (B, 3) mm of the motion about the CT
    centre. The truth is cast to the prediction's dtype and device.

    * ``"poster"``: rotation term ``||rv(R_pred) - rv(R_true)||_2`` with rv
      the rotation vector in degrees (`matrix_to_rotation_vector`);
    * ``"geodesic"``: rotation term ``length_mm * angle(R_pred^T R_true)``,
      the angle in rad (`geodesic_angle`).
    """
    if kind not in POSE_LOSSES:
        raise InputError(f"pose loss kind must be one of {POSE_LOSSES}; got {kind!r}")
    if not (isinstance(length_mm, (int, float)) and math.isfinite(length_mm) and length_mm > 0):
        raise InputError(f"pose loss length_mm must be a finite number > 0; got {length_mm!r}")
    _check_pose_batch(pred_rotation, pred_translation_mm, "predicted")
    _check_pose_batch(true_rotation, true_translation_mm, "true")
    if true_rotation.shape[0] != pred_rotation.shape[0]:
        raise InputError(f"predicted and true poses differ in batch size: {pred_rotation.shape[0]} vs "
                         f"{true_rotation.shape[0]}")
    like = dict(dtype=pred_rotation.dtype, device=pred_rotation.device)
    true_rotation = true_rotation.to(**like)
    true_translation_mm = true_translation_mm.to(**like)
    translation_term = _norm(pred_translation_mm - true_translation_mm)
    if kind == "poster":
        delta = matrix_to_rotation_vector(pred_rotation) - matrix_to_rotation_vector(true_rotation)
        rotation_term = _norm(delta * (180.0 / math.pi))
    else:
        rotation_term = length_mm * geodesic_angle(pred_rotation, true_rotation)
    return (rotation_term + translation_term).mean()
