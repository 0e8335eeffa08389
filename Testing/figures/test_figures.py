"""Report pictures: edge overlay, checkerboard, before/after panels, line charts and PNG output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from DiffRegLogic import figures
from DiffRegLogic.errors import InputError
from DiffRegLogic.xray.files import to_uint8

H, W = 128, 120
CENTER = (64.0, 58.0)  # (row, column)
RADIUS = 30.0


def _xray(shape=(H, W), seed=0) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    rng = np.random.default_rng(seed)
    return np.exp(-((rows - 50) ** 2 + (cols - 70) ** 2) / 3000.0) + 0.05 * rng.standard_normal(shape)


def _disc(center=CENTER, radius=RADIUS, shape=(H, W)) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return (np.hypot(rows - center[0], cols - center[1]) < radius).astype(np.float64) * 3.0


def _coloured(rgb: np.ndarray) -> np.ndarray:
    return ~((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]))


# --------------------------------------------------------------------------
# edge overlay
# --------------------------------------------------------------------------


def test_edge_overlay_draws_the_disc_outline_on_the_grey_xray():
    xray = _xray()
    rgb = figures.edge_overlay(xray, torch.from_numpy(_disc()).to(torch.float32))
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8

    edge = _coloured(rgb)
    rows, cols = np.nonzero(edge)
    distance = np.hypot(rows - CENTER[0], cols - CENTER[1])
    assert len(rows) > 100
    assert np.all(np.abs(distance - RADIUS) <= 2.0), (distance.min(), distance.max())
    assert np.all(rgb[edge] == (0, 255, 0))

    # most of the circumference has an edge pixel within 1.5 px
    angles = np.deg2rad(np.arange(360))
    boundary = np.stack([CENTER[0] + RADIUS * np.sin(angles), CENTER[1] + RADIUS * np.cos(angles)], 1)
    gaps = np.hypot(boundary[:, None, 0] - rows[None], boundary[:, None, 1] - cols[None]).min(1)
    assert np.mean(gaps <= 1.5) >= 0.95

    grey = to_uint8(xray)
    assert np.array_equal(rgb[~edge][:, 0], grey[~edge])
    assert np.array_equal(rgb[~edge][:, 1], grey[~edge])
    assert np.array_equal(rgb[~edge][:, 2], grey[~edge])


def test_edge_overlay_colour_batch_axis_and_flat_drr():
    xray = torch.from_numpy(_xray()).to(torch.float64)[None]
    rgb = figures.edge_overlay(xray, _disc()[None], color=(255, 0, 255))
    assert np.all(rgb[_coloured(rgb)] == (255, 0, 255))
    assert np.count_nonzero(_coloured(rgb)) > 100
    flat = figures.edge_overlay(_xray(), np.full((H, W), 2.0))
    assert not _coloured(flat).any()


def test_drr_edges_are_thresholded_gradients_of_the_scipy_blur():
    """The edge finder blurs with the shared Gaussian (cut at 4 sigma, replicated border): scipy's nearest mode."""
    drr = _disc() + 0.3 * _xray(seed=5)
    for sigma in (figures.EDGE_SIGMA, 2.5):
        smooth = scipy.ndimage.gaussian_filter(drr, sigma, mode="nearest", truncate=4.0)
        magnitude = np.hypot(*np.gradient(smooth))
        threshold = max(np.percentile(magnitude, figures.EDGE_PERCENTILE),
                        figures.EDGE_FLOOR * np.percentile(magnitude, 99.5))
        expected = magnitude >= threshold
        edges = figures.drr_edges(drr, sigma=sigma)
        # equal up to pixels within rounding of the threshold
        assert np.count_nonzero(edges != expected) <= np.count_nonzero(np.isclose(magnitude, threshold, rtol=1e-9))
    with pytest.raises(InputError, match="edge sigma"):
        figures.drr_edges(drr, sigma=-1.0)


# --------------------------------------------------------------------------
# checkerboard and before/after
# --------------------------------------------------------------------------


def test_checkerboard_alternates_tiles_of_the_two_windowed_images():
    rows, cols = np.mgrid[:96, :128]
    a = rows + 0.5 * cols
    b = 1000.0 * np.cos(cols / 7.0) + rows  # another intensity scale
    rgb = figures.checkerboard(a, torch.from_numpy(b), tiles=6)  # 6 tiles along the 96 rows: 16 px squares
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
    ga, gb = to_uint8(a), to_uint8(b)
    assert np.array_equal(rgb[:16, :16, 0], ga[:16, :16])
    assert np.array_equal(rgb[:16, 16:32, 0], gb[:16, 16:32])
    assert np.array_equal(rgb[16:32, 16:32, 0], ga[16:32, 16:32])
    expected = np.where(((rows // 16) + (cols // 16)) % 2 == 0, ga, gb)
    assert np.array_equal(rgb[..., 0], expected)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_checkerboard_mask_has_square_tiles_along_the_shorter_side():
    # 60 x 100 with 4 tiles: 15 px squares, so 100 columns hold 6 2/3 tiles (the last one cut)
    mask = figures.checkerboard_mask((60, 100), 4)
    rows, cols = np.mgrid[:60, :100]
    np.testing.assert_array_equal(mask, ((rows // 15) + (cols // 15)) % 2 == 0)
    assert mask[0, 0] and not mask[0, 15] and mask[0, 90] and not mask[15, 0]
    # the same rule for a tall image; a side that does not divide: pixel p in tile floor(p tiles / side)
    np.testing.assert_array_equal(figures.checkerboard_mask((100, 60), 4), mask.T)
    odd = figures.checkerboard_mask((7, 10), 2)  # 3.5 px tiles: rows 0-3 | 4-6, columns 0-3 | 4-6 | 7-9
    np.testing.assert_array_equal(odd[:, 0], [True] * 4 + [False] * 3)
    np.testing.assert_array_equal(odd[0], [True] * 4 + [False] * 3 + [True] * 3)
    # one tile along the 5 rows: a 5 px square, then the cut second tile of the other image
    np.testing.assert_array_equal(figures.checkerboard_mask((5, 8), 1), np.mgrid[:5, :8][1] < 5)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(InputError, match="tiles must be a whole number from 1 to 5"):
            figures.checkerboard_mask((5, 8), bad)


def test_float_maps_zscore_difference_and_checkerboard():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(12, 18)) * 4.0 + 9.0
    b = rng.normal(size=(12, 18))
    z = figures.zscore(a)
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(z, (a - a.mean()) / a.std(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(figures.zscore(np.full((3, 4), 2.5)), np.zeros((3, 4)))  # a constant: 0
    # difference: z(a) - z(b); zero for a positive affine copy
    np.testing.assert_allclose(figures.difference_map(a, b), z - (b - b.mean()) / b.std(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(figures.difference_map(a, 0.5 * a - 3.0), 0.0, atol=1e-12)
    board = figures.checkerboard_map(a, b, 3)  # 4 px squares along the 12 rows
    rows, cols = np.mgrid[:12, :18]
    np.testing.assert_array_equal(board, np.where(((rows // 4) + (cols // 4)) % 2 == 0, a, b))
    # the pictures are these maps on the windowed images
    np.testing.assert_array_equal(figures.checkerboard(a, b, 3)[..., 0],
                                  figures.checkerboard_map(to_uint8(a), to_uint8(b), 3))
    expected = np.clip(127.5 + figures.difference_map(a, b) * 127.5 / 3.0, 0, 255).round()
    np.testing.assert_array_equal(figures.difference(a, b)[..., 1], expected)
    with pytest.raises(InputError, match=r"xray shape \(12, 18\) and drr shape \(12, 17\) differ"):
        figures.difference_map(a, b[:, :17])
    with pytest.raises(InputError, match="2D image"):
        figures.zscore(np.zeros((2, 3, 4)))


def test_before_after_is_two_labelled_overlays_with_a_separator():
    xray = _xray()
    before, after = _disc(center=(70.0, 50.0)), _disc()
    rgb = figures.before_after(xray, before, after, labels=("start", "registered"))
    assert rgb.shape == (H, 2 * W + figures.SEPARATOR_PX, 3)
    left, bar, right = rgb[:, :W], rgb[:, W:W + figures.SEPARATOR_PX], rgb[:, W + figures.SEPARATOR_PX:]
    assert np.all(bar == 255)
    for panel, drr in ((left, before), (right, after)):
        reference = figures.edge_overlay(xray, drr)
        differ = np.any(panel != reference, axis=2)
        rows, cols = np.nonzero(differ)
        assert len(rows) > 20  # the label is there ...
        assert rows.max() < 25 and cols.max() < 90  # ... in a small box in the top left corner
        outside = np.ones((H, W), bool)
        outside[:25, :90] = False
        assert np.array_equal(panel[outside], reference[outside])


# --------------------------------------------------------------------------
# line plot
# --------------------------------------------------------------------------


def _axes_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the black axis lines found in the picture."""
    black = np.all(rgb == 0, axis=2)
    left = int(np.argmax(black.sum(0)))
    bottom = int(np.argmax(black.sum(1)))
    top = int(np.flatnonzero(black[:, left]).min())
    right = int(np.flatnonzero(black[bottom]).max())
    return left, top, right, bottom


def _coverage(rgb: np.ndarray, color) -> np.ndarray:
    """Per pixel the fraction a of ``color`` where the pixel is the blend a color + (1 - a) white, else 0.

    matplotlib draws antialiased lines: the pixels the line covers in full
    have exactly its colour, its edges are partly covered.
    """
    c = np.asarray(color, dtype=np.float64)
    p = rgb.astype(np.float64)
    k = int(np.argmax(255.0 - c))  # the channel where the colour differs most from white
    a = (255.0 - p[..., k]) / (255.0 - c[k])
    blend = a[..., None] * c + (1.0 - a[..., None]) * 255.0
    return np.where(np.all(np.abs(p - blend) <= 8.0, axis=2) & (a > 0.02), np.clip(a, 0.0, 1.0), 0.0)


def _curve_row(rgb: np.ndarray, column: int, color) -> float:
    """Row of the ``color`` line's centre in ``column`` inside the axes box: the coverage-weighted mean row.

    The line must be there in its exact colour (at least one fully covered
    pixel) and only a few pixels high.
    """
    _, top, _, bottom = _axes_box(rgb)
    exact = top + np.flatnonzero(np.all(rgb[top:bottom + 1, column] == color, axis=1))
    assert len(exact) > 0, f"no {color} pixel in column {column}"
    weight = _coverage(rgb[top:bottom + 1, column][None], color)[0]
    rows = top + np.flatnonzero(weight)
    assert np.ptp(rows) <= 8
    return float((weight[rows - top] * rows).sum() / weight.sum())


def test_line_plot_puts_y_equals_x_where_the_axis_mapping_says():
    x = np.linspace(0.0, 10.0, 101)
    series = {"y = x": (x.tolist(), x.tolist())}
    rgb = figures.line_plot(series, title="identity", xlabel="x", ylabel="y", size=(500, 360))
    assert rgb.shape == (360, 500, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[0, 0] == 255)

    left, top, right, bottom = _axes_box(rgb)
    frame = figures.plot_frame(series, title="identity", xlabel="x", ylabel="y", size=(500, 360))
    assert (left, top, right, bottom) == (frame.left, frame.top, frame.right, frame.bottom)
    assert frame.x_lim == (0.0, 10.0) and frame.y_lim == (0.0, 10.0)
    assert frame.y_labels == ("0", "2", "4", "6", "8", "10")
    assert right - left > 300 and bottom - top > 200

    color = figures.PALETTE[0]
    for value in (1.5, 4.0, 6.5, 9.0):
        column = int(round(left + value / 10.0 * (right - left)))
        expected = bottom - value / 10.0 * (bottom - top)
        assert abs(_curve_row(rgb, column, color) - expected) <= 2.0, value
        # at the data x of that very pixel column the line's centre is within half a pixel of y = x
        x_here = (column - left) / (right - left) * 10.0
        assert abs(_curve_row(rgb, column, color) - (bottom - x_here / 10.0 * (bottom - top))) <= 0.5, value


def test_line_plot_gives_each_series_its_own_colour_and_breaks_at_nan():
    x = np.arange(0.0, 21.0)
    low = np.full_like(x, 1.0)
    high = np.where((x > 8) & (x < 12), np.nan, 9.0)
    rgb = figures.line_plot({"low": (x, low), "high": (torch.from_numpy(x), torch.from_numpy(high))})
    assert rgb.shape == (400, 640, 3)
    frame = figures.plot_frame({"low": (x, low), "high": (x, high)})
    first, second = figures.PALETTE[0], figures.PALETTE[1]
    assert first != second
    column = int(round(float(frame.column(4.0))))
    assert abs(_curve_row(rgb, column, first) - frame.row(1.0)) <= 2.0
    assert abs(_curve_row(rgb, column, second) - frame.row(9.0)) <= 2.0
    gap = int(round(float(frame.column(10.0))))
    assert not np.all(rgb[frame.top:frame.bottom + 1, gap] == second, axis=1).any()
    assert np.all(rgb[:frame.top] == second, axis=2).any()  # the legend shows the colour


def test_line_plot_log_axis_spaces_decades_equally():
    x = np.linspace(0.0, 3.0, 61)
    y = 10.0 ** x
    y[0] = 0.0  # not drawable on a log axis: dropped
    rgb = figures.line_plot({"decades": (x, y)}, log_y=True, size=(400, 500))
    assert rgb.shape == (500, 400, 3)
    frame = figures.plot_frame({"decades": (x, y)}, log_y=True, size=(400, 500))
    assert frame.y_lim == (1.0, 1000.0)
    assert frame.y_labels == ("1", "10", "100", "1000")
    left, top, right, bottom = _axes_box(rgb)
    assert (left, top, right, bottom) == (frame.left, frame.top, frame.right, frame.bottom)
    # the decades are equally spaced between the ends of the axis
    np.testing.assert_allclose(frame.row([1.0, 10.0, 100.0, 1000.0]), bottom - np.arange(4) / 3.0 * (bottom - top),
                               atol=1e-9)
    # y = 10**x is a straight line on the picture: log10(y) = x maps linearly to rows
    for value in (0.5, 1.5, 2.5):
        column = int(round(left + value / 3.0 * (right - left)))
        x_here = (column - left) / (right - left) * 3.0  # the data x of that pixel column
        assert abs(_curve_row(rgb, column, figures.PALETTE[0]) - (bottom - x_here / 3.0 * (bottom - top))) <= 0.5
    # a long axis: labels on every n-th decade, and the limits still enclose all the data
    wide = figures.plot_frame({"wide": ([0, 1, 2], [3e-13, 1e-5, 20.0])}, log_y=True)
    assert wide.y_lim[0] <= 3e-13 and wide.y_lim[1] >= 20.0 and (wide.y_ticks[0], wide.y_ticks[-1]) == wide.y_lim
    exponents = np.log10(wide.y_ticks)
    np.testing.assert_allclose(exponents, np.round(exponents), atol=1e-12)
    assert len(set(np.diff(np.round(exponents)))) == 1 and len(wide.y_ticks) <= 10


def test_line_plot_single_point_and_constant_series():
    rgb = figures.line_plot({"one": ([3.0], [5.0])}, size=(300, 200))
    assert rgb.shape == (200, 300, 3)
    frame = figures.plot_frame({"one": ([3.0], [5.0])}, size=(300, 200))
    assert frame.x_lim[0] < 3.0 < frame.x_lim[1] and frame.y_lim[0] < 5.0 < frame.y_lim[1]
    r, c = int(round(float(frame.row(5.0)))), int(round(float(frame.column(3.0))))
    assert np.all(rgb[r, c] == figures.PALETTE[0])

    flat = {"flat": [2.0, 2.0, 2.0, 2.0]}  # y values alone: x = 0, 1, 2, 3
    rgb = figures.line_plot(flat, size=(300, 200))
    frame = figures.plot_frame(flat, size=(300, 200))
    assert frame.x_lim == (0.0, 3.0) and frame.y_lim[0] < 2.0 < frame.y_lim[1]
    column = int(round(float(frame.column(1.5))))
    assert abs(_curve_row(rgb, column, figures.PALETTE[0]) - frame.row(2.0)) <= 2.0


def test_plot_frame_mapping_is_the_axes_box():
    """The frame's data -> pixel mapping (from matplotlib's transData) puts the axis limits on the axis lines."""
    series = {"a": ([0.0, 7.0, 3.0], [2.0, -4.0, 11.0]), "b": [1.0, 2.0]}
    frame = figures.plot_frame(series, xlabel="x", size=(420, 300))
    assert frame.x_lim[0] <= 0.0 and frame.x_lim[1] >= 7.0 and frame.y_lim[0] <= -4.0 and frame.y_lim[1] >= 11.0
    np.testing.assert_allclose(frame.column(frame.x_lim), (frame.left, frame.right), atol=1e-9)
    np.testing.assert_allclose(frame.row(frame.y_lim), (frame.bottom, frame.top), atol=1e-9)
    # linear in between, ticks inside the limits
    mid_x, mid_y = np.mean(frame.x_lim), np.mean(frame.y_lim)
    assert float(frame.column(mid_x)) == pytest.approx((frame.left + frame.right) / 2, abs=1e-9)
    assert float(frame.row(mid_y)) == pytest.approx((frame.top + frame.bottom) / 2, abs=1e-9)
    assert frame.x_ticks[0] == frame.x_lim[0] and frame.x_ticks[-1] == frame.x_lim[1]
    assert len(frame.x_labels) == len(frame.x_ticks) and len(frame.y_labels) == len(frame.y_ticks)
    # the same layout for the same arguments, so plot_frame describes line_plot's picture
    rgb = figures.line_plot(series, xlabel="x", size=(420, 300))
    assert _axes_box(rgb) == (frame.left, frame.top, frame.right, frame.bottom)


def test_line_plot_palette_order_and_the_ninth_series():
    series = {f"s{k}": ([0.0, 8.0], [k + 1.0, k + 1.0]) for k in range(9)}  # y = 1 .. 9, off the axis line
    rgb = figures.line_plot(series, size=(640, 480))
    frame = figures.plot_frame(series, size=(640, 480))
    column = int(round(float(frame.column(4.0))))
    for k in range(8):
        row = int(round(float(frame.row(k + 1.0))))
        assert np.all(rgb[row - 1:row + 2, column] == figures.PALETTE[k], axis=1).any(), k
    row = int(round(float(frame.row(9.0))))
    assert np.all(rgb[row - 1:row + 2, column] == figures.PALETTE[0], axis=1).any()  # the palette starts over


def test_line_plot_leaves_matplotlib_state_alone():
    """matplotlib is imported on the first chart only, and never through pyplot or its global settings."""
    code = ("import sys, numpy as np; import DiffRegLogic.figures.plots as p, DiffRegLogic.experiments.reports; "
            "assert 'matplotlib' not in sys.modules; "
            "import matplotlib; matplotlib.use('svg'); before = dict(matplotlib.rcParams); "
            "rgb = p.line_plot({'a': [1.0, 2.0]}, log_y=True); "
            "assert rgb.shape == (400, 640, 3); assert 'matplotlib.pyplot' not in sys.modules; "
            "assert matplotlib.get_backend() == 'svg'; assert dict(matplotlib.rcParams) == before")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(figures.__file__).parents[2])


# --------------------------------------------------------------------------
# PNG and bad input
# --------------------------------------------------------------------------


def test_save_png_round_trips(tmp_path):
    rgb = figures.checkerboard(_xray(), _disc(), tiles=4)
    path = figures.save_png(tmp_path / "new" / "folder" / "check.png", rgb)
    assert path.exists()
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), rgb)


def test_bad_input_says_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match=r"shape.*\(64, 64\).*\(64, 65\)"):
        figures.edge_overlay(np.zeros((64, 64)), np.zeros((64, 65)))
    with pytest.raises(InputError, match="shape"):
        figures.checkerboard(np.zeros((64, 64)), np.zeros((32, 64)))
    with pytest.raises(InputError, match="drr_after"):
        figures.before_after(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(InputError, match="tiles"):
        figures.checkerboard(np.zeros((16, 16)), np.zeros((16, 16)), tiles=17)
    with pytest.raises(InputError, match="non-finite"):
        figures.edge_overlay(np.full((8, 8), np.nan), np.zeros((8, 8)))
    with pytest.raises(InputError, match="empty"):
        figures.line_plot({})
    with pytest.raises(InputError, match="positive"):
        figures.line_plot({"loss": ([0, 1], [0.0, -1.0])}, log_y=True)
    with pytest.raises(InputError, match="same length"):
        figures.line_plot({"loss": ([0, 1, 2], [1.0, 2.0])})
    with pytest.raises(InputError, match=r"at least \(160, 120\)"):
        figures.line_plot({"loss": [1.0, 2.0]}, size=(100, 300))
    with pytest.raises(InputError, match="no room for the axes"):
        figures.line_plot({"loss": [1.0, 2.0]}, title="a title", xlabel="x", size=(160, 120))
    with pytest.raises(InputError, match="no finite point"):
        figures.plot_frame({"loss": [float("nan"), float("inf")]})
    with pytest.raises(InputError, match="uint8"):
        figures.save_png(tmp_path / "x.png", np.zeros((4, 4, 3)))


def test_blend_is_alpha_compositing_of_the_windowed_images():
    rng = np.random.default_rng(3)
    xray, drr = rng.random((20, 30)), rng.random((20, 30))
    back = to_uint8(xray).astype(float)
    front = to_uint8(drr).astype(float)
    out = figures.blend(xray, drr, 0.25, tint=(255, 128, 0))
    np.testing.assert_allclose(out[..., 0], np.round(0.75 * back + 0.25 * front), atol=0.5)
    np.testing.assert_allclose(out[..., 1], np.round(0.75 * back + 0.25 * front * 128 / 255), atol=0.5)
    np.testing.assert_allclose(out[..., 2], np.round(0.75 * back), atol=0.5)
    np.testing.assert_array_equal(figures.blend(xray, drr, 0.0)[..., 0], to_uint8(xray))
    with pytest.raises(InputError, match="opacity"):
        figures.blend(xray, drr, 1.5)


def test_difference_is_zero_for_an_affine_copy_and_signed_otherwise():
    rng = np.random.default_rng(4)
    xray = rng.random((16, 16))
    same = figures.difference(xray, 3.0 * xray + 7.0)
    assert np.all((same == 127) | (same == 128))  # z-scores cancel: mid grey (127.5 up to rounding)
    bright = xray.copy()
    bright[4, 4] += 5.0
    diff = figures.difference(bright, xray)
    assert diff[4, 4, 0] > 200 and diff.shape == (16, 16, 3)


def test_panel_row_layout():
    a = np.zeros((10, 12, 3), np.uint8)
    b = np.full((10, 7, 3), 9, np.uint8)
    row = figures.panel_row([a, b], ["", ""])
    assert row.shape == (10, 12 + figures.SEPARATOR_PX + 7, 3)
    np.testing.assert_array_equal(row[:, 12 + figures.SEPARATOR_PX:], b)
    assert np.all(row[:, 12:12 + figures.SEPARATOR_PX] == 255)
    with pytest.raises(InputError, match="same height"):
        figures.panel_row([a, b[:5]], ["a", "b"])
