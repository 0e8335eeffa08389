"""X-ray against DRR on float images: z-scores, their difference, and checkerboards (numpy only).

The one core of two front ends: `figures.composites` turns these maps into
RGB pictures (`difference`, `checkerboard`), and `mrml.overlay` writes them
into the overlay volume of the slice views (`overlay_image`).

Tile rule (`checkerboard_mask`): ``tiles`` square tiles fit along the
*shorter* side of the image, each ``min(H, W) / tiles`` pixels wide (pixel
``p`` along either axis lies in tile ``floor(p * tiles / min(H, W))``); the
longer side gets as many tiles of that size as fit, the last one possibly
cut. The tile at the top left, and every tile an even number of steps from
it, shows the first image.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def _float_image(image, name: str) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"{name} must be a 2D image (H, W); got shape {tuple(array.shape)}")
    return array


def _pair(a, b, name_a: str = "xray", name_b: str = "drr") -> tuple[np.ndarray, np.ndarray]:
    a, b = _float_image(a, name_a), _float_image(b, name_b)
    if a.shape != b.shape:
        raise InputError(
            f"{name_a} shape {tuple(a.shape)} and {name_b} shape {tuple(b.shape)} differ; "
            "render the DRR on the X-ray's detector (same rows and columns)"
        )
    return a, b


def zscore(image) -> np.ndarray:
    """``(image - mean) / std`` over all pixels, float64 (H, W); a constant image becomes 0 (std taken as 1)."""
    image = _float_image(image, "image")
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def difference_map(xray, drr) -> np.ndarray:
    """Z-scored X-ray minus z-scored DRR, float64 (H, W), in standard deviations; 0 where they agree.

    Invariant to a positive affine change of either image's intensities
    (the two need not share a scale).
    """
    a, b = _pair(xray, drr)
    return zscore(a) - zscore(b)


def checkerboard_mask(shape: tuple[int, int], tiles: int = 8) -> np.ndarray:
    """(H, W) bool, True on the tiles of the first image: ``tiles`` square tiles along the shorter side.

    Pixel (r, c) is True when ``r * tiles // min(H, W) + c * tiles // min(H, W)``
    is even (see the module docstring). ``tiles`` must be a whole number
    from 1 to min(H, W), else InputError.
    """
    h, w = (int(n) for n in shape)
    side = min(h, w)
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or not 1 <= tiles <= side:
        raise InputError(f"tiles must be a whole number from 1 to {side} (the shorter side); got {tiles!r}")
    row_tile = np.arange(h) * int(tiles) // side
    col_tile = np.arange(w) * int(tiles) // side
    return (row_tile[:, None] + col_tile[None, :]) % 2 == 0


def checkerboard_map(first, second, tiles: int = 8) -> np.ndarray:
    """float64 (H, W): ``first`` on the tiles of `checkerboard_mask`, ``second`` elsewhere (values as given).

    Callers choose the intensities: the pictures pass each image windowed to
    8 bits, the slice views each image z-scored.
    """
    a, b = _pair(first, second, "first image", "second image")
    return np.where(checkerboard_mask(a.shape, tiles), a, b)
