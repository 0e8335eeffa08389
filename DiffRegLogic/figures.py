"""Pictures for registration reports: overlays, checkerboards and line charts.

Every function returns an RGB image as a numpy array (H, W, 3) uint8 that
`save_png` writes to disk; drawing uses Pillow and numpy only.

- `edge_overlay`: the X-ray in grey with the DRR's edges drawn on top in
  colour, the usual way to judge a 2D/3D registration by eye.
- `checkerboard`: alternating squares of two images, each windowed on its own.
- `before_after`: two edge overlays side by side with a label on each.
- `line_plot`: a line chart (loss or error against iteration, say), with
  `plot_frame` giving the pixel box and axis limits it draws into.

Images may be numpy arrays or torch tensors (H, W) of any float dtype (a
leading batch axis of 1, (1, H, W), is dropped); tensors are detached and
copied to the CPU. X-ray and DRR are each windowed to 8 bits between their
own 0.5 and 99.5 percentiles (`io.to_uint8`), so their intensity scales need
not agree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .io import to_uint8

EDGE_SIGMA = 1.0
"""Gaussian smoothing (pixels) of the DRR before its gradient is taken."""

EDGE_PERCENTILE = 91.0
"""Pixels whose gradient magnitude is in the top 9 % count as edges ..."""

EDGE_FLOOR = 0.25
"""... provided it is at least this fraction of the 99.5th percentile of the
magnitude, so that a DRR with few edges (a flat background) does not get its
noise or its flat areas drawn."""

SEPARATOR_PX = 4
"""Width of the white bar between the panels of `before_after`."""

PALETTE = (
    (0, 114, 178),    # blue
    (213, 94, 0),     # vermilion
    (0, 158, 115),    # bluish green
    (204, 121, 167),  # reddish purple
    (230, 159, 0),    # orange
    (86, 180, 233),   # sky blue
    (110, 60, 170),   # violet
    (140, 140, 20),   # olive
)
"""Series colours of `line_plot`, in order; a ninth series reuses the first."""

_AXIS = (0, 0, 0)
_GRID = (225, 225, 225)
_TEXT = (30, 30, 30)
_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------
# Images in, images out
# --------------------------------------------------------------------------


def _image(image, name: str) -> np.ndarray:
    """A numpy float64 (H, W) copy of an image given as array or tensor, (H, W) or (1, H, W)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric (H, W) array or tensor, not {type(image).__name__}") from exc
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"{name} must be a 2D image (H, W); got shape {tuple(array.shape)}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputError(f"{name} has {bad} non-finite pixels (NaN or inf); replace them before drawing")
    return array


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{name_a} shape {tuple(a.shape)} and {name_b} shape {tuple(b.shape)} differ; "
            "render the DRR on the X-ray's detector (same rows and columns)"
        )


def _color(color, name: str = "color") -> tuple[int, int, int]:
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be three integers 0-255 (R, G, B); got {color!r}") from exc
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise InputError(f"{name} must be three integers 0-255 (R, G, B); got {color!r}")
    return rgb


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (H, W) array; edges padded by repeating the border."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    h, w = image.shape
    padded = np.pad(image, ((radius, radius), (0, 0)), mode="edge")
    rows = sum(k * padded[i:i + h] for i, k in enumerate(kernel))
    padded = np.pad(rows, ((0, 0), (radius, radius)), mode="edge")
    return sum(k * padded[:, i:i + w] for i, k in enumerate(kernel))


def drr_edges(drr, sigma: float = EDGE_SIGMA, percentile: float = EDGE_PERCENTILE) -> np.ndarray:
    """Edge mask (H, W) bool of a DRR: outlines of bones and organs.

    The DRR is smoothed with a Gaussian of ``sigma`` pixels, its gradient
    magnitude taken by central differences, and the pixels at or above the
    ``percentile``-th percentile of the magnitude (default: the top 9 %) kept,
    but never pixels below `EDGE_FLOOR` times the 99.5th percentile. A flat
    DRR has no edges.
    """
    image = _image(drr, "drr")
    if not 0.0 <= percentile < 100.0:
        raise InputError(f"edge percentile must be in [0, 100); got {percentile}")
    smooth = _gaussian_blur(image, float(sigma))
    if min(smooth.shape) < 2:
        return np.zeros(smooth.shape, dtype=bool)
    gy, gx = np.gradient(smooth)
    magnitude = np.hypot(gy, gx)
    peak = float(np.percentile(magnitude, 99.5))
    if peak <= 0.0:
        return np.zeros(magnitude.shape, dtype=bool)
    threshold = max(float(np.percentile(magnitude, percentile)), EDGE_FLOOR * peak)
    return magnitude >= threshold


def edge_overlay(xray, drr, color: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """The X-ray in grey with the DRR's edges (`drr_edges`) drawn in ``color``.

    ``xray`` and ``drr`` are (H, W) images of the same shape; returns (H, W, 3)
    uint8. Pixels off the edges are grey, R = G = B = ``io.to_uint8(xray)``.
    """
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")
    rgb = np.repeat(to_uint8(fixed)[:, :, None], 3, axis=2)
    rgb[drr_edges(moving)] = _color(color)
    return rgb


def checkerboard(xray, drr, tiles: int = 8) -> np.ndarray:
    """Alternating square tiles of two images, (H, W, 3) uint8 grey.

    ``tiles`` squares fit along the shorter side; the tile at the top left
    (and every tile an even number of steps from it) shows ``xray``, the
    others ``drr``. Each image is windowed to grey on its own percentiles.
    """
    a = _image(xray, "xray")
    b = _image(drr, "drr")
    _same_shape(a, b, "xray", "drr")
    h, w = a.shape
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or not 1 <= tiles <= min(h, w):
        raise InputError(f"tiles must be a whole number from 1 to {min(h, w)} (the shorter side); got {tiles!r}")
    side = min(h, w)
    row_tile = np.arange(h) * tiles // side
    col_tile = np.arange(w) * tiles // side
    first = (row_tile[:, None] + col_tile[None, :]) % 2 == 0
    grey = np.where(first, to_uint8(a), to_uint8(b))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _font(size: int):
    """Pillow's default font at ``size`` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    """White text on a black box in the top left corner of an (H, W, 3) image."""
    if not text:
        return rgb
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    font = _font(12)
    tw, th = _text_size(draw, text, font)
    draw.rectangle((2, 2, 2 + tw + 8, 2 + th + 6), fill=(0, 0, 0))
    draw.text((6, 5), text, fill=_WHITE, font=font)
    return np.asarray(image).copy()


def before_after(xray, drr_before, drr_after, labels: Sequence[str] = ("before", "after")) -> np.ndarray:
    """Two `edge_overlay` panels side by side: the X-ray with the DRR before and after registration.

    Returns (H, 2 W + `SEPARATOR_PX`, 3) uint8: the panels are split by a
    white bar and each carries its label (white on black) in its top left
    corner.
    """
    if isinstance(labels, str) or len(labels) != 2:
        raise InputError(f"labels must be two strings (left panel, right panel); got {labels!r}")
    fixed = _image(xray, "xray")
    before = _image(drr_before, "drr_before")
    after = _image(drr_after, "drr_after")
    _same_shape(fixed, before, "xray", "drr_before")
    _same_shape(fixed, after, "xray", "drr_after")
    left = _label(edge_overlay(fixed, before), str(labels[0]))
    right = _label(edge_overlay(fixed, after), str(labels[1]))
    bar = np.full((fixed.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([left, bar, right], axis=1)


def blend(xray, drr, opacity: float = 0.5, tint: Sequence[int] = (255, 170, 60)) -> np.ndarray:
    """The DRR over the X-ray as a slice view composites them, (H, W, 3) uint8.

    Both are windowed to grey on their own percentiles; the DRR is tinted
    with ``tint`` and drawn with ``opacity`` (0 = X-ray only, 1 = DRR only).
    """
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must be between 0 and 1; got {opacity!r}")
    back = np.repeat(to_uint8(fixed)[:, :, None].astype(np.float64), 3, axis=2)
    front = to_uint8(moving)[:, :, None].astype(np.float64) * (np.asarray(_color(tint, "tint")) / 255.0)
    return np.round((1 - opacity) * back + opacity * front).astype(np.uint8)


def difference(xray, drr) -> np.ndarray:
    """Z-scored X-ray minus z-scored DRR in grey, mid-grey = 0, (H, W, 3) uint8 (symmetric window at 3 SD)."""
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")

    def z(a: np.ndarray) -> np.ndarray:
        sd = a.std()
        return (a - a.mean()) / (sd if sd > 0 else 1.0)

    grey = np.clip(127.5 + (z(fixed) - z(moving)) * (127.5 / 3.0), 0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def grey(image) -> np.ndarray:
    """One image (H, W) windowed on its own percentiles as a grey RGB picture (H, W, 3) uint8."""
    return np.repeat(to_uint8(_image(image, "image"))[:, :, None], 3, axis=2)


def panel_row(panels: Sequence, labels: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 panels of one height side by side with white bars, each labelled in its corner."""
    if len(panels) != len(labels) or not panels:
        raise InputError(f"give as many labels as panels (at least one); got {len(panels)} panels, {len(labels)} labels")
    arrays = [np.asarray(p, dtype=np.uint8) for p in panels]
    if any(a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != arrays[0].shape[0] for a in arrays):
        raise InputError("panels must be (H, W, 3) images of the same height")
    bar = np.full((arrays[0].shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    out = []
    for i, (a, text) in enumerate(zip(arrays, labels)):
        if i:
            out.append(bar)
        out.append(_label(a, str(text)))
    return np.concatenate(out, axis=1)


def save_png(path: str | os.PathLike, rgb) -> Path:
    """Write an image (H, W, 3) or grey (H, W) uint8 to a PNG file, creating parent folders; returns the path."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InputError(
            f"save_png needs a uint8 image (H, W, 3) or (H, W); got {array.dtype} of shape {array.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------
# Line charts
# --------------------------------------------------------------------------


def _nice_step(span: float, target: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` intervals."""
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * magnitude * (1 + 1e-9):
            return factor * magnitude
    return 10.0 * magnitude  # pragma: no cover - the loop always returns


def _linear_ticks(lo: float, hi: float) -> tuple[tuple[float, float], list[float], int]:
    """Axis limits rounded out to whole steps, the tick values and the decimals their labels need."""
    if hi <= lo:
        pad = 0.5 if lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    ticks = [float(f"{k * step:.12g}") for k in range(first, last + 1)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 12 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return (ticks[0], ticks[-1]), ticks, decimals


def _linear_label(value: float, decimals: int) -> str:
    if value != 0 and (abs(value) >= 1e6 or decimals > 6):
        return f"{value:.3g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _log_ticks(lo: float, hi: float) -> tuple[tuple[float, float], list[float]]:
    """Log axis limits on whole decades and the decade ticks (every n-th decade on long axes)."""
    first = math.floor(math.log10(lo) + 1e-9)
    last = math.ceil(math.log10(hi) - 1e-9)
    if last <= first:
        first, last = first - 1, last + 1  # a constant y on a whole decade
    every = max(1, math.ceil((last - first) / 8))
    last = first + every * math.ceil((last - first) / every)
    return (10.0 ** first, 10.0 ** last), [10.0 ** k for k in range(first, last + 1, every)]


def _log_label(value: float) -> str:
    exponent = round(math.log10(value))
    if -3 <= exponent <= 4:
        return f"{value:.{max(0, -exponent)}f}"
    return f"1e{exponent}"


def _numbers(values):
    """A tensor as a CPU numpy array; anything else as it is."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    return values


def _series(series: Mapping, log_y: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Check and convert ``series`` to [(name, x, y)] float64, with unusable points set to NaN."""
    if not isinstance(series, Mapping):
        raise InputError(f"series must be a dict name -> (x values, y values); got {type(series).__name__}")
    if not series:
        raise InputError("series is empty: give at least one curve, name -> (x values, y values)")
    out = []
    for name, value in series.items():
        try:
            if isinstance(value, (tuple, list)) and len(value) == 2 and all(np.ndim(_numbers(v)) == 1 for v in value):
                x, y = (np.array(_numbers(v), dtype=np.float64) for v in value)
            else:
                y = np.array(_numbers(value), dtype=np.float64)
                if y.ndim == 2 and y.shape[0] == 2:
                    x, y = y[0].copy(), y[1].copy()
                else:
                    x = np.arange(y.size, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"series {name!r} must be (x values, y values) of numbers") from exc
        if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
            raise InputError(
                f"series {name!r}: x and y must be 1D of the same length; got shapes {x.shape} and {y.shape}"
            )
        if log_y:
            y[~(y > 0)] = np.nan  # a log axis cannot show zero or negative values: they break the line
        bad = ~(np.isfinite(x) & np.isfinite(y))
        x[bad] = np.nan
        y[bad] = np.nan
        out.append((str(name), x, y))
    if not any(np.isfinite(y).any() for _, _, y in out):
        raise InputError(
            "series has no finite point to draw" + (" (a log y axis shows only positive values)" if log_y else "")
        )
    return out


@dataclass(frozen=True)
class PlotFrame:
    """Where `line_plot` draws: pixel box of the axes and the data range it spans.

    ``left`` is the column of the y axis, ``bottom`` the row of the x axis,
    ``right`` and ``top`` the far ends of the axes; ``x_lim`` and ``y_lim`` the
    data values at those ends (round numbers), ``x_ticks`` and ``y_ticks`` the
    labelled values. With ``log_y`` the y axis is linear in log10(y).
    """

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    x_lim: tuple[float, float]
    y_lim: tuple[float, float]
    x_ticks: tuple[float, ...]
    y_ticks: tuple[float, ...]
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    log_y: bool
    legend_rows: tuple[tuple[int, ...], ...]

    def column(self, x):
        """Pixel column (float) of data x."""
        x0, x1 = self.x_lim
        return self.left + (np.asarray(x, dtype=np.float64) - x0) / (x1 - x0) * (self.right - self.left)

    def row(self, y):
        """Pixel row (float) of data y."""
        y0, y1 = self.y_lim
        y = np.asarray(y, dtype=np.float64)
        if self.log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (np.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
        else:
            t = (y - y0) / (y1 - y0)
        return self.bottom - t * (self.bottom - self.top)


_PAD = 8
_TICK = 5
_SWATCH = 22


def _frame(data, title: str, xlabel: str, ylabel: str, size, log_y: bool) -> PlotFrame:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be (width, height) in pixels; got {size!r}") from exc
    if width < 160 or height < 120:
        raise InputError(f"size (width, height) must be at least (160, 120) pixels; got ({width}, {height})")
    xs = np.concatenate([x[np.isfinite(x)] for _, x, _ in data])
    ys = np.concatenate([y[np.isfinite(y)] for _, _, y in data])
    x_lim, x_ticks, x_dec = _linear_ticks(float(xs.min()), float(xs.max()))
    x_labels = [_linear_label(v, x_dec) for v in x_ticks]
    if log_y:
        y_lim, y_ticks = _log_ticks(float(ys.min()), float(ys.max()))
        y_labels = [_log_label(v) for v in y_ticks]
    else:
        y_lim, y_ticks, y_dec = _linear_ticks(float(ys.min()), float(ys.max()))
        y_labels = [_linear_label(v, y_dec) for v in y_ticks]

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, title_font = _font(12), _font(15)
    text_h = _text_size(draw, "0123456789Ag", font)[1]

    top = _PAD
    if title:
        top += _text_size(draw, title, title_font)[1] + _PAD
    # the legend: rows of (swatch, name) entries, wrapped to the width
    rows: list[list[int]] = [[]]
    used = 0
    for index, (name, _, _) in enumerate(data):
        entry = _SWATCH + 4 + _text_size(draw, name, font)[0] + 16
        if rows[-1] and used + entry > width - 2 * _PAD:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += entry
    top += len(rows) * (text_h + 6) + _PAD // 2

    label_w = max(_text_size(draw, s, font)[0] for s in y_labels)
    left = _PAD + label_w + _TICK + 4
    if ylabel:
        left += _text_size(draw, ylabel, font)[1] + _PAD
    bottom = height - 1 - _PAD - (text_h + _TICK + 4)
    if xlabel:
        bottom -= text_h + _PAD
    right = width - 1 - max(_PAD + 4, _text_size(draw, x_labels[-1], font)[0] // 2 + _PAD)
    if right - left < 40 or bottom - top < 40:
        raise InputError(
            f"size ({width}, {height}) leaves no room for the axes after labels and legend; make the plot larger"
        )
    return PlotFrame(width, height, left, top, right, bottom, x_lim, y_lim, tuple(x_ticks), tuple(y_ticks),
                     tuple(x_labels), tuple(y_labels), log_y, tuple(tuple(r) for r in rows))


def plot_frame(series: Mapping, title: str = "", xlabel: str = "", ylabel: str = "",
               size: tuple[int, int] = (640, 400), log_y: bool = False) -> PlotFrame:
    """The `PlotFrame` (axes box in pixels, axis limits and ticks) that `line_plot` uses for these arguments."""
    return _frame(_series(series, log_y), title, xlabel, ylabel, size, log_y)


def _runs(finite: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    edges = np.diff(np.concatenate([[0], finite.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def line_plot(series: Mapping, title: str = "", xlabel: str = "", ylabel: str = "",
              size: tuple[int, int] = (640, 400), log_y: bool = False) -> np.ndarray:
    """A line chart on a white background, (height, width, 3) uint8 for ``size = (width, height)``.

    ``series`` maps a name to ``(x values, y values)`` (lists, arrays or
    tensors of the same length) or to y values alone (x = 0, 1, 2, ...). NaN or
    inf breaks a line; a point with no neighbour is drawn as a dot. Colours
    come from `PALETTE` in order and the legend (above the axes) names them.
    Axis limits are the data range rounded out to round tick values (a
    constant or single value gets a range around it). With ``log_y`` the y
    axis is logarithmic with ticks on decades, and zero or negative y values
    are dropped (they break the line like NaN); InputError if nothing is left.
    An empty dict is an InputError.
    """
    data = _series(series, log_y)
    frame = _frame(data, title, xlabel, ylabel, size, log_y)
    image = Image.new("RGB", (frame.width, frame.height), _WHITE)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(12), _font(15)
    text_h = _text_size(draw, "0123456789Ag", font)[1]

    # grid, ticks and tick labels
    for value, text in zip(frame.x_ticks, frame.x_labels):
        c = int(round(float(frame.column(value))))
        draw.line([(c, frame.top), (c, frame.bottom)], fill=_GRID)
        draw.line([(c, frame.bottom), (c, frame.bottom + _TICK)], fill=_AXIS)
        tw = _text_size(draw, text, font)[0]
        draw.text((c - tw / 2, frame.bottom + _TICK + 3), text, fill=_TEXT, font=font)
    for value, text in zip(frame.y_ticks, frame.y_labels):
        r = int(round(float(frame.row(value))))
        draw.line([(frame.left, r), (frame.right, r)], fill=_GRID)
        draw.line([(frame.left - _TICK, r), (frame.left, r)], fill=_AXIS)
        tw, th = _text_size(draw, text, font)
        draw.text((frame.left - _TICK - 4 - tw, r - th / 2 - 1), text, fill=_TEXT, font=font)

    # the curves
    for index, (_, x, y) in enumerate(data):
        color = PALETTE[index % len(PALETTE)]
        cols, rows = frame.column(x), frame.row(y)
        for start, stop in _runs(np.isfinite(x) & np.isfinite(y)):
            points = list(zip(cols[start:stop].tolist(), rows[start:stop].tolist()))
            if len(points) == 1:
                (c, r), = points
                draw.ellipse((c - 3, r - 3, c + 3, r + 3), fill=color)
            else:
                draw.line(points, fill=color, width=2, joint="curve")

    # axes on top of the curves
    draw.line([(frame.left, frame.top), (frame.left, frame.bottom)], fill=_AXIS)
    draw.line([(frame.left, frame.bottom), (frame.right, frame.bottom)], fill=_AXIS)

    # title, legend, axis labels
    y_text = _PAD
    if title:
        tw, th = _text_size(draw, title, title_font)
        draw.text(((frame.width - tw) / 2, y_text), title, fill=_TEXT, font=title_font)
        y_text += th + _PAD
    for row in frame.legend_rows:
        entries = [(i, data[i][0], _SWATCH + 4 + _text_size(draw, data[i][0], font)[0]) for i in row]
        c = (frame.width - (sum(e[2] for e in entries) + 16 * (len(entries) - 1))) / 2
        for i, name, entry_w in entries:
            mid = y_text + text_h / 2 + 1
            draw.line([(c, mid), (c + _SWATCH, mid)], fill=PALETTE[i % len(PALETTE)], width=3)
            draw.text((c + _SWATCH + 4, y_text), name, fill=_TEXT, font=font)
            c += entry_w + 16
        y_text += text_h + 6
    if xlabel:
        tw = _text_size(draw, xlabel, font)[0]
        draw.text(((frame.left + frame.right - tw) / 2, frame.bottom + _TICK + 3 + text_h + _PAD), xlabel,
                  fill=_TEXT, font=font)
    if ylabel:
        tw, th = _text_size(draw, ylabel, font)
        strip = Image.new("RGB", (tw + 2, th + 2), _WHITE)
        ImageDraw.Draw(strip).text((1, 1), ylabel, fill=_TEXT, font=font)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (_PAD, int((frame.top + frame.bottom - strip.height) / 2)))
    return np.asarray(image).copy()
