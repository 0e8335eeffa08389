"""A realistic radiograph in one call: render the primary intensity, then apply `physics.realism`."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..physics.materials import MaterialVolume
from ..physics.realism import Realism, apply_realism, intensity_to_line_integral
from ..volume.ct import Volume
from .rendering import render


def simulate_radiograph(volume: Volume, detector: Detector, pose, realism: Realism | None = None,
                        renderer: str = "siddon", output: str = "line_integral", **render_options) -> torch.Tensor:
    """A realistic radiograph (B, H, W) of ``volume`` at ``pose``.

    A `MaterialVolume` gives the polychromatic primary intensity of its beam;
    a plain `Volume` gives exp(-line integral of mu). Then `apply_realism`;
    ``output`` = ``"line_integral"`` (-log I/I0) or ``"intensity"`` (I/I0).
    """
    if output not in ("line_integral", "intensity"):
        raise InputError(f"unknown output {output!r}; choose line_integral or intensity")
    realism = Realism() if realism is None else realism
    if not isinstance(realism, Realism):
        raise InputError(f"realism must be a Realism or None, got {type(realism).__name__}")
    realism.check_detector(detector)  # before the render: its kernels must fit this detector
    if isinstance(volume, MaterialVolume):
        volume = volume.with_beam(replace(volume.beam, output="intensity"))
        intensity = render(volume, detector, pose, renderer, **render_options)
    else:
        intensity = torch.exp(-render(volume, detector, pose, renderer, **render_options))
    noisy = apply_realism(intensity, detector, realism)
    return noisy if output == "intensity" else intensity_to_line_integral(noisy, realism)
