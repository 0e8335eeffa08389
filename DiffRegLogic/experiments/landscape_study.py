"""The similarity along each of the six pose axes around the true pose (the seed paper's Fig. 5).

Writes ``landscape.csv``, ``landscape.md`` and ``landscape.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..drr.backends import RENDERERS
from ..drr.rendering import render
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose
from ..registration.pyramid import level_detector, resize_image
from ..similarity.registry import get_similarity
from ..volume.ct import Volume
from .common import PLOT_SIZE, _check_case, _count, _names, _nonnegative
from .reports import fmt, line_plot, markdown_table, round_cell, save_png, stack_panels, write_csv

AXES = ("rx", "ry", "rz", "tx", "ty", "tz")
"""The six pose axes of the landscape: rotation-vector components (deg) and translations (mm)."""

RENDER_BATCH = 16
"""Poses per render call in `landscape`."""


def _offsets(half_range: float, n_points: int) -> np.ndarray:
    """``n_points`` offsets evenly from -half_range to +half_range, with 0 added if an even count misses it."""
    offsets = np.linspace(-half_range, half_range, n_points)
    if not np.any(offsets == 0.0):
        offsets = np.sort(np.append(offsets, 0.0))
    offsets[np.abs(offsets) < 1e-12 * max(half_range, 1.0)] = 0.0
    return offsets


def landscape(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    similarities: Sequence[str] | Mapping[str, str | Callable] = ("zncc",),
    renderer: str = "siddon",
    rotation_range_deg: float = 30.0,
    translation_range_mm: float = 60.0,
    n_points: int = 41,
    level: float = 1.0,
) -> dict:
    """Similarity along each of the six pose axes around ``true_pose`` (the seed paper's Fig. 5).

    For each axis in `AXES` only that parameter varies, over ``n_points``
    offsets from -range to +range (0 included; an even ``n_points`` gets 0
    added): the CT is rotated about its centre by the rotation vector
    ``offset * e_k`` (deg) or shifted by ``offset * e_k`` (mm, world axes),
    ``pose = perturb_pose(true_pose, motion, volume.center)``. The DRRs are
    rendered `RENDER_BATCH` poses at a time without gradients on
    ``detector.downsample(level)`` and compared with the X-ray (H, W)
    area-averaged to that size.

    ``similarities``: names of `DiffRegLogic.similarity.SIMILARITIES`, or a
    dict label -> name or callable ``(drr, xray, mask) -> (B,)`` (a learned
    similarity, a `Measure` ...); a callable with a torch ``dtype``
    attribute compares in that dtype, any other in the DRR's.

    Writes into ``out_dir`` (created if missing):

    * ``landscape.csv``: columns similarity, axis, offset (deg or mm), value;
      one row per similarity, axis and offset;
    * ``landscape.md``: per similarity and axis the offset of the maximum,
      whether it is at 0, the value at 0 and the maximum;
    * ``landscape.png``: per similarity two stacked line plots (`PLOT_SIZE`
      each): rotations (deg) and translations (mm), value vs offset.

    Returns a dict: ``csv``, ``markdown``, ``png`` (paths), ``argmax``
    ({similarity: {axis: offset of the maximum}}), ``value_at_zero``
    ({similarity: value}), ``offsets`` ({"rotation": [deg], "translation":
    [mm]}), ``values`` ({similarity: {axis: [value per offset]}}).
    """
    xray, pose = _check_case(volume, xray, detector, true_pose)
    functions = _measures(similarities)
    names = tuple(functions)
    if renderer not in RENDERERS:
        raise InputError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")
    rot_range = _nonnegative(rotation_range_deg, "rotation_range_deg")
    trans_range = _nonnegative(translation_range_mm, "translation_range_mm")
    n_points = _count(n_points, "n_points")
    try:
        level = float(level)
    except (TypeError, ValueError) as exc:
        raise InputError(f"level must be a downsampling factor >= 1, got {level!r}") from exc
    if not (math.isfinite(level) and level >= 1):
        raise InputError(f"level must be a downsampling factor >= 1, got {level!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    det = level_detector(detector, level)
    xr = resize_image(xray, det.shape)
    center = volume.center.to(torch.float64).cpu()
    rot_offsets, trans_offsets = _offsets(rot_range, n_points), _offsets(trans_range, n_points)
    motions, keys = [], []
    for k, axis in enumerate(AXES):
        offsets = rot_offsets if k < 3 else trans_offsets
        m = torch.zeros(len(offsets), 6, dtype=torch.float64)
        m[:, k] = torch.as_tensor(np.deg2rad(offsets) if k < 3 else offsets, dtype=torch.float64)
        motions.append(m)
        keys += [(axis, float(o)) for o in offsets]
    poses = perturb_pose(pose, torch.cat(motions), center)

    values = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, poses.shape[0], RENDER_BATCH):
            drr = render(volume, det, poses[start:start + RENDER_BATCH], renderer)
            for name, fn in functions.items():
                values[name] += _evaluate(fn, drr, xr)

    rows, argmax, at_zero, table = [], {}, {}, []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in names:
        argmax[name] = {}
        per_axis = {axis: [] for axis in AXES}
        for (axis, offset), value in zip(keys, values[name]):
            per_axis[axis].append((offset, value))
            rows.append([name, axis, round_cell(offset, 6), round_cell(value, 8)])
        curves[name] = {}
        for k, axis in enumerate(AXES):
            offs = np.array([o for o, _ in per_axis[axis]])
            vals = np.array([v for _, v in per_axis[axis]])
            curves[name][axis] = (offs, vals)
            finite = np.where(np.isfinite(vals), vals, -np.inf)
            best = int(np.argmax(finite))
            zero = float(vals[int(np.argmin(np.abs(offs)))])
            argmax[name][axis] = float(offs[best])
            at_zero.setdefault(name, zero)
            table.append([name, axis, "deg" if k < 3 else "mm", fmt(offs[best], 2),
                          "yes" if offs[best] == 0 else "no", fmt(zero, 6), fmt(vals[best], 6)])

    csv_path, md_path, png_path = out / "landscape.csv", out / "landscape.md", out / "landscape.png"
    write_csv(csv_path, ["similarity", "axis", "offset", "value"], rows)
    lines = [
        "# Similarity landscape around the true pose",
        "",
        f"One pose parameter varied at a time: rotations rx, ry, rz of the CT about its centre within "
        f"+-{rot_range:g} deg, translations tx, ty, tz within +-{trans_range:g} mm "
        f"({len(rot_offsets)} offsets per axis); renderer {renderer}, detector {det.rows}x{det.cols} "
        f"(level {level:g}).",
        "",
    ]
    lines += markdown_table(["similarity", "axis", "unit", "offset of maximum", "maximum at 0",
                              "value at 0", "maximum"], table)
    md_path.write_text("\n".join(lines) + "\n")

    panels = []
    for name in names:
        series_rot = {axis: curves[name][axis] for axis in AXES[:3]}
        series_trans = {axis: curves[name][axis] for axis in AXES[3:]}
        panels.append(line_plot(series_rot, title=f"{name}: rotation about the CT centre",
                                xlabel="offset from the true pose (deg)", ylabel=name, size=PLOT_SIZE))
        panels.append(line_plot(series_trans, title=f"{name}: translation",
                                xlabel="offset from the true pose (mm)", ylabel=name, size=PLOT_SIZE))
    save_png(png_path, stack_panels(panels))
    return {
        "csv": csv_path,
        "markdown": md_path,
        "png": png_path,
        "argmax": argmax,
        "value_at_zero": at_zero,
        "offsets": {"rotation": rot_offsets.tolist(), "translation": trans_offsets.tolist()},
        "values": {name: {axis: curves[name][axis][1].tolist() for axis in AXES} for name in names},
    }


def _measures(similarities) -> dict[str, Callable]:
    """Label -> similarity function from names or a dict label -> name or callable (InputError otherwise)."""
    if not isinstance(similarities, Mapping):
        return {name: get_similarity(name) for name in _names(similarities, "similarities")}
    if not similarities:
        raise InputError("similarities is empty: give at least one")
    out = {}
    for label, value in similarities.items():
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"each similarity needs a non-empty name, got {label!r}")
        if isinstance(value, str):
            out[label] = get_similarity(value)
        elif callable(value):
            out[label] = value
        else:
            raise InputError(f"similarity {label!r} must be a name or a callable (drr, xray, mask) -> (B,), "
                             f"got {type(value).__name__}")
    return out


def _evaluate(fn: Callable, drr: torch.Tensor, xray: torch.Tensor) -> list[float]:
    """``fn(drr, xray, None)`` (B,) as floats, compared in ``fn.dtype`` when that is a torch dtype (as a `Measure`)."""
    dtype = getattr(fn, "dtype", None)
    if isinstance(dtype, torch.dtype):
        drr, xray = drr.to(dtype), xray.to(dtype)
    value = torch.as_tensor(fn(drr, xray, None))
    if value.shape != (drr.shape[0],):
        raise InputError(f"a similarity must return one value per DRR ({drr.shape[0]},), got {tuple(value.shape)}")
    return value.double().cpu().tolist()
