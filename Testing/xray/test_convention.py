"""Intensity-convention detection and conversion on the phantom: every polarity x log combination, processed or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, InputError, render
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.volume.phantoms import chest_phantom
from DiffRegLogic.xray import xray_from_array
from DiffRegLogic.xray.convention import apply_convention, detect_convention, resolve_convention
from DiffRegLogic.xray.intensity import EXPLICIT_CONVENTIONS, INTENSITY_CONVENTIONS

F64 = torch.float64


@pytest.fixture(scope="module")
def case():
    """Line integrals (H, W) at the true pose, the DRR at the demo start pose, for 6 mm and 9 mm pixels."""
    volume = chest_phantom().to(dtype=F64)
    target, start = demo_poses(volume.center.to(F64))
    out = {}
    with torch.no_grad():
        for pixel in (6.0, 9.0):  # 6 mm: the patient fills the field; 9 mm: open field around it
            detector = Detector(64, 64, 1020.0, (pixel, pixel))
            out[pixel] = (render(volume, detector, target, "siddon")[0].numpy(),
                          render(volume, detector, start, "siddon")[0].numpy())
    return out


def stored(line_integral, convention):
    intensity = 1000.0 * np.exp(-line_integral)
    return {"line_integral": line_integral, "inverted": 7.0 - line_integral, "intensity": intensity,
            "inverted_intensity": 1200.0 - intensity}[convention]


def full_range(v):
    return (v - v.min()) / (v.max() - v.min())


def window(v, low=0.5, high=99.5):
    lo, hi = np.percentile(v, [low, high])
    return np.clip((v - lo) / (hi - lo), 0, 1)


PROCESSING = {
    "none": lambda v: v,
    "window": lambda v: 100 * window(v),
    "gamma 0.7": lambda v: (v / v.max()) ** 0.7 if v.min() >= 0 else full_range(v) ** 0.7,
    "gamma 1.4": lambda v: full_range(v) ** 1.4,
    "8-bit": lambda v: np.round(255 * full_range(v)),
    "gamma, 8-bit": lambda v: np.round(255 * full_range(v) ** 0.8),
}
"""Processing that keeps what the values are (a power or a quantisation of the stored values, a mild window).
A window that clips the raw image's densest pixels to 0 shifts its zero: -log then no longer gives a line
integral and log against raw is ambiguous (test_polarity_survives_harsh_windowing asserts the polarity only)."""


def test_conventions_are_listed_torch_free():
    assert INTENSITY_CONVENTIONS == ("auto", "line_integral", "intensity", "inverted", "inverted_intensity")
    assert set(EXPLICIT_CONVENTIONS) == set(INTENSITY_CONVENTIONS) - {"auto"}


@pytest.mark.parametrize("convention", EXPLICIT_CONVENTIONS)
def test_apply_convention_gives_back_the_line_integral(case, convention):
    line_integral, _ = case[9.0]
    out = apply_convention(stored(line_integral, convention), convention).numpy()
    # up to the open-field offset (and, for inverted raw images, the unknown inversion offset's bend)
    corr = np.corrcoef(out.ravel(), line_integral.ravel())[0, 1]
    if convention in ("line_integral", "inverted", "intensity"):
        assert np.allclose(out - out.min(), line_integral - line_integral.min(), atol=1e-9)
    assert corr > 0.99


@pytest.mark.parametrize("processing", PROCESSING)
@pytest.mark.parametrize("convention", EXPLICIT_CONVENTIONS)
def test_detection_with_and_without_a_drr(case, convention, processing):
    line_integral, drr = case[6.0]
    image = PROCESSING[processing](stored(line_integral, convention))
    alone = detect_convention(image)
    assert alone.convention == convention, alone.reason
    with_drr = detect_convention(image, drr)
    assert with_drr.convention == convention, with_drr.reason
    assert with_drr.scores[convention] == max(with_drr.scores.values())
    assert set(with_drr.scores) == set(EXPLICIT_CONVENTIONS)


@pytest.mark.parametrize("processing", PROCESSING)
@pytest.mark.parametrize("convention", EXPLICIT_CONVENTIONS)
def test_detection_with_a_drr_and_an_open_field(case, convention, processing):
    line_integral, drr = case[9.0]
    image = PROCESSING[processing](stored(line_integral, convention))
    detection = detect_convention(image, drr)
    assert detection.convention == convention, detection.reason


def test_polarity_survives_harsh_windowing(case):
    line_integral, drr = case[6.0]
    for convention in EXPLICIT_CONVENTIONS:
        image = np.round(255 * window(stored(line_integral, convention), 2, 98))
        bright = convention in ("line_integral", "inverted_intensity")
        for found in (detect_convention(image).convention, detect_convention(image, drr).convention):
            assert (found in ("line_integral", "inverted_intensity")) == bright


def test_resolve_convention_converts_only_when_nobody_said(case):
    line_integral, drr = case[6.0]
    raw = stored(line_integral, "intensity")
    auto = xray_from_array(raw, intensity="auto")
    assert auto.meta["intensity_source"] == "default"
    resolved = resolve_convention(auto, torch.from_numpy(drr))
    assert resolved is not auto and resolved.meta["intensity_detected"] == "intensity"
    assert resolved.meta["intensity_source"] == "detected" and "correlation" in resolved.meta["intensity_detection_reason"]
    assert set(resolved.meta["intensity_scores"]) == set(EXPLICIT_CONVENTIONS)
    out = resolved.image.numpy()
    assert np.corrcoef(out.ravel(), line_integral.ravel())[0, 1] > 0.999
    assert auto.meta["intensity_source"] == "default" and auto.image.numpy() is not out  # the input is unchanged
    told = xray_from_array(raw, intensity="line_integral")
    assert told.meta["intensity_source"] == "user"
    assert resolve_convention(told, drr) is told
    assert xray_from_array(7.0 - line_integral, intensity="inverted").meta["intensity"] == "reflected"


@pytest.mark.parametrize("image, message", [
    (np.full((16, 16), 3.0), "constant"),
    (np.where(np.eye(16) > 0, np.nan, 1.0) + np.arange(16), "NaN"),
    (np.ones(16), "2D"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(InputError, match=message):
        detect_convention(image)
    with pytest.raises(InputError, match=message):
        apply_convention(image, "intensity")


def test_bad_arguments_are_refused(case):
    line_integral, drr = case[6.0]
    with pytest.raises(InputError, match="unknown intensity convention"):
        apply_convention(line_integral, "log")
    with pytest.raises(InputError, match="DRR is"):
        detect_convention(line_integral, drr[:10])
    with pytest.raises(InputError, match="DRR is constant"):
        detect_convention(line_integral, np.zeros_like(drr))
    with pytest.raises(InputError, match="mask selects no pixel"):
        detect_convention(line_integral, mask=np.zeros_like(drr, dtype=bool))
