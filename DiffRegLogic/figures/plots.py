"""Line charts for reports (loss curves, landscapes, robustness curves), drawn by matplotlib.

`line_plot` draws a chart as an RGB array (H, W, 3) uint8; `plot_frame`
gives the pixel box of its axes, their limits and ticks, and the data ->
pixel mapping (from the axes' ``transData``).

matplotlib is imported on the first chart, not with this module (the CLI
starts without it). Each chart is its own ``Figure`` on a
``FigureCanvasAgg``: pyplot, its global figure list and the user's chosen
backend are never touched. The figure is ``size`` pixels at `DPI` dots per
inch; every length below is given in pixels and converted to points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from ..errors import InputError

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
"""Series colours of `line_plot` (R, G, B 0-255), in order; a ninth series reuses the first."""

DPI = 128
"""Dots per inch of the charts: a power of two, so that ``size`` / DPI inches are exactly ``size`` pixels."""

_AXIS = (0, 0, 0)          # axis lines and tick marks: the only pure black in a chart
_GRID = (225, 225, 225)
_TEXT = (30, 30, 30)
_FONT_PX, _TITLE_PX = 12, 15
_PAD = 8                   # pixels between the picture's border, the title, the legend and the axes
_TICK = 5                  # tick length, pixels
_LINE = 2.0                # curve width, pixels
_DOT = 7.0                 # diameter of a point drawn alone, pixels
_MIN_AXES = 40             # smallest axes box, pixels
_SWATCH_EM = 22.0 / _FONT_PX  # the legend's colour swatch, 22 px of line, in font sizes


def _pt(pixels: float) -> float:
    """Points (1/72 inch) for a length in pixels at `DPI`."""
    return pixels * 72.0 / DPI


def _rgb(color) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color)


def _plain(text: str) -> str:
    """Text as typed: a dollar sign is shown, not read as the start of mathtext."""
    return str(text).replace("$", r"\$")


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


def _size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be (width, height) in pixels; got {size!r}") from exc
    if width < 160 or height < 120:
        raise InputError(f"size (width, height) must be at least (160, 120) pixels; got ({width}, {height})")
    return width, height


@dataclass(frozen=True)
class PlotFrame:
    """Where `line_plot` draws: the pixel box of the axes and the data range it spans.

    Pixel coordinates are numpy indices of the (height, width, 3) picture,
    pixel centres at whole numbers, rows counted down from the top. ``left``
    is the column of the y axis line, ``bottom`` the row of the x axis line,
    ``right`` and ``top`` the far ends of the axes; ``x_lim`` and ``y_lim``
    are the data values there (round numbers: ticks of matplotlib's
    ``MaxNLocator`` or, with ``log_y``, whole decades from ``LogLocator``),
    ``x_ticks`` and ``y_ticks`` the labelled values and ``x_labels`` and
    ``y_labels`` their labels. With ``log_y`` the y axis is linear in log10(y).
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
    transform: object = field(default=None, compare=False, repr=False)
    """The axes' ``transData`` (frozen): data (x, y) -> display pixels, origin at the bottom left corner."""

    def _pixels(self, x, y) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            display = self.transform.transform(np.column_stack([x.ravel(), y.ravel()]))
        return display.reshape(x.shape + (2,))

    def column(self, x):
        """Pixel column (float, array like ``x``) of data x."""
        return self._pixels(x, self.y_lim[0])[..., 0] - 0.5

    def row(self, y):
        """Pixel row (float, array like ``y``) of data y; NaN or -inf for y <= 0 on a log axis."""
        return self.height - 0.5 - self._pixels(self.x_lim[0], y)[..., 1]


def _limits(locator, lo: float, hi: float, log: bool) -> tuple[tuple[float, float], list[float]]:
    """Axis limits rounded out to ``locator``'s ticks around [lo, hi], and the ticks between them."""
    lo, hi = locator.nonsingular(lo, hi)  # a single value gets a range around it
    ticks = sorted({float(f"{t:.12g}") for t in locator.tick_values(lo, hi)})
    scale = np.log10 if log else (lambda v: v)  # compare on the axis' own (linear or log) scale
    tol = 1e-9 * (scale(hi) - scale(lo))
    first = max((t for t in ticks if scale(t) <= scale(lo) + tol), default=ticks[0])
    last = min((t for t in ticks if scale(t) >= scale(hi) - tol), default=ticks[-1])
    return (first, last), [t for t in ticks if first <= t <= last]


def _log_label(value: float, _pos=None) -> str:
    exponent = round(math.log10(value))
    if -3 <= exponent <= 4:
        return f"{value:.{max(0, -exponent)}f}"
    return f"1e{exponent}"


def _style(ax, ticker) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        spine = ax.spines[side]
        spine.set_linewidth(_pt(1.0))
        spine.set_color(_rgb(_AXIS))
        spine.set_snap(False)  # drawn on the pixel centres `PlotFrame` reports, not moved by Agg's snapping
    ax.set_facecolor("white")
    ax.set_axisbelow(True)
    ax.grid(True, which="major", color=_rgb(_GRID), linewidth=_pt(1.0))
    ax.tick_params(which="major", direction="out", length=_pt(_TICK), width=_pt(1.0), color=_rgb(_AXIS),
                   labelsize=_pt(_FONT_PX), labelcolor=_rgb(_TEXT), pad=_pt(3))
    ax.tick_params(which="minor", direction="out", length=_pt(_TICK / 2), width=_pt(1.0), color=_rgb(_AXIS))
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter(useOffset=False))
    ax.xaxis.get_offset_text().set(size=_pt(_FONT_PX), color=_rgb(_TEXT))
    ax.yaxis.get_offset_text().set(size=_pt(_FONT_PX), color=_rgb(_TEXT))


def _draw_series(ax, data) -> list:
    """The curves, NaN breaking them, and points without a neighbour as dots; returns the legend handles."""
    handles = []
    for index, (name, x, y) in enumerate(data):
        color = _rgb(PALETTE[index % len(PALETTE)])
        (line,) = ax.plot(x, y, color=color, linewidth=_pt(_LINE), solid_joinstyle="round",
                          solid_capstyle="round", label=_plain(name))
        handles.append(line)
        finite = np.isfinite(y)
        before = np.concatenate([[False], finite[:-1]])
        after = np.concatenate([finite[1:], [False]])
        alone = finite & ~before & ~after
        if alone.any():
            ax.plot(x[alone], y[alone], linestyle="none", marker="o", markersize=_pt(_DOT),
                    markerfacecolor=color, markeredgecolor=color, markeredgewidth=0)
    return handles


def _legend(fig, renderer, handles, width: int, top: float):
    """A legend above the axes, its top at display height ``top``, on as few rows as the width allows."""
    for ncol in range(len(handles), 0, -1):
        legend = fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, top / fig.bbox.height),
                            ncol=ncol, frameon=False, fontsize=_pt(_FONT_PX), borderaxespad=0.0, borderpad=0.0,
                            handlelength=_SWATCH_EM, handletextpad=0.4, columnspacing=1.4, labelcolor=_rgb(_TEXT))
        if ncol == 1 or legend.get_window_extent(renderer).width <= width - 2 * _PAD:
            return legend
        legend.remove()
    return None  # pragma: no cover - ncol 1 always returns


def _build(series, title, xlabel, ylabel, size, log_y):
    """(canvas, PlotFrame) of a laid-out chart: the figure is ready to draw."""
    data = _series(series, log_y)
    width, height = _size(size)
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    ax = fig.add_axes((0.2, 0.2, 0.6, 0.6))
    _style(ax, ticker)
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_log_label))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter(useOffset=False))
    handles = _draw_series(ax, data)

    xs = np.concatenate([x[np.isfinite(x)] for _, x, _ in data])
    ys = np.concatenate([y[np.isfinite(y)] for _, _, y in data])
    steps = [1, 2, 2.5, 5, 10]
    x_loc = ticker.MaxNLocator(nbins=max(2, min(6, width // 80)), steps=steps)
    y_loc = (ticker.LogLocator(base=10.0, numticks=9) if log_y
             else ticker.MaxNLocator(nbins=max(2, min(6, height // 60)), steps=steps))
    ax.xaxis.set_major_locator(x_loc)  # a locator needs its axis (LogLocator.nonsingular reads its data)
    ax.yaxis.set_major_locator(y_loc)
    x_lim, x_ticks = _limits(x_loc, float(xs.min()), float(xs.max()), False)
    y_lim, y_ticks = _limits(y_loc, float(ys.min()), float(ys.max()), log_y)
    ax.set_xlim(x_lim)
    ax.set_ylim(y_lim)
    ax.set_xticks(x_ticks)
    ax.set_yticks(y_ticks)
    if xlabel:
        ax.set_xlabel(_plain(xlabel), fontsize=_pt(_FONT_PX), color=_rgb(_TEXT), labelpad=_pt(_PAD / 2))
    if ylabel:
        ax.set_ylabel(_plain(ylabel), fontsize=_pt(_FONT_PX), color=_rgb(_TEXT), labelpad=_pt(_PAD / 2))

    # title and legend at the top, then the axes box in the room the tick and axis labels leave
    top = height - _PAD
    if title:
        text = fig.text(0.5, top / height, _plain(title), ha="center", va="top", fontsize=_pt(_TITLE_PX),
                        color=_rgb(_TEXT))
        top -= text.get_window_extent(renderer).height + _PAD
    legend = _legend(fig, renderer, handles, width, top)
    top -= legend.get_window_extent(renderer).height + _PAD / 2
    for _ in range(2):  # the labels do not depend on the box size: the second pass only confirms the box
        box, tight = ax.get_window_extent(renderer), ax.get_tightbbox(renderer)
        x0 = _PAD + (box.x0 - tight.x0)
        x1 = width - _PAD - (tight.x1 - box.x1)
        y0 = _PAD + (box.y0 - tight.y0)
        y1 = top - (tight.y1 - box.y1)
        # axis lines on pixel centres: display coordinate k + 0.5 is the middle of pixel k
        left, right = math.ceil(x0 - 0.5), math.floor(x1 - 0.5)
        low, high = math.ceil(y0 - 0.5), math.floor(y1 - 0.5)
        if right - left < _MIN_AXES or high - low < _MIN_AXES:
            raise InputError(
                f"size ({width}, {height}) leaves no room for the axes after labels and legend; make the plot larger"
            )
        ax.set_position(((left + 0.5) / width, (low + 0.5) / height, (right - left) / width, (high - low) / height))

    frame = PlotFrame(
        width, height, left, height - 1 - high, right, height - 1 - low, x_lim, y_lim, tuple(x_ticks),
        tuple(y_ticks), tuple(ax.xaxis.get_major_formatter().format_ticks(x_ticks)),
        tuple(ax.yaxis.get_major_formatter().format_ticks(y_ticks)), log_y, ax.transData.frozen())
    return canvas, frame


def plot_frame(series: Mapping, title: str = "", xlabel: str = "", ylabel: str = "",
               size: tuple[int, int] = (640, 400), log_y: bool = False) -> PlotFrame:
    """The `PlotFrame` (axes box in pixels, axis limits, ticks, data -> pixel mapping) of `line_plot` with these arguments."""
    return _build(series, title, xlabel, ylabel, size, log_y)[1]


def line_plot(series: Mapping, title: str = "", xlabel: str = "", ylabel: str = "",
              size: tuple[int, int] = (640, 400), log_y: bool = False) -> np.ndarray:
    """A line chart on a white background, (height, width, 3) uint8 for ``size = (width, height)`` pixels.

    ``series`` maps a name to ``(x values, y values)`` (lists, arrays or
    tensors of the same length) or to y values alone (x = 0, 1, 2, ...). NaN or
    inf breaks a line; a point with no neighbour is drawn as a dot. Colours
    come from `PALETTE` in order and the legend (above the axes) names them.
    Axis limits are the data range rounded out to round tick values (a
    constant or single value gets a range around it). With ``log_y`` the y
    axis is logarithmic with ticks on decades, and zero or negative y values
    are dropped (they break the line like NaN); InputError if nothing is left.
    An empty dict, a size under (160, 120) or one too small for the labels
    is an InputError. `plot_frame` says where the axes are.
    """
    canvas, _ = _build(series, title, xlabel, ylabel, size, log_y)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
