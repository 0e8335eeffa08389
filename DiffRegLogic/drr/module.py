"""`DRR`: a thin ``torch.nn.Module`` over `render`, for use inside networks and training loops.

The CT is held as buffers (``mu``, ``affine``, and for a `MaterialVolume` its
``densities``), so ``module.to(device)``, ``.double()`` and ``state_dict()``
work as for any module; ``forward(pose)`` renders (B, H, W) DRRs with the
renderer options given at construction. Gradients reach the pose (and the
detector's intrinsics when they are tensors that require grad), exactly as
with `render`, which does the work.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..physics.materials import MaterialVolume
from ..volume.ct import Volume
from .backends import BACKENDS, DEFAULT_MAX_MEMORY_MB
from .rendering import check_render_inputs, render


class DRR(torch.nn.Module):
    """Render DRRs of one CT on one detector: ``DRR(volume, detector)(pose) -> (B, H, W)``.

    Args:
        volume: the CT (`Volume` or `MaterialVolume`); its tensors become buffers.
        detector: the detector geometry.
        renderer, step_voxels, max_memory_mb, backend: as for `render` (checked here, InputError).
    """

    def __init__(self, volume: Volume, detector: Detector, renderer: str = "siddon", *, step_voxels: float = 1.0,
                 max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, backend: str = "auto") -> None:
        super().__init__()
        step_voxels, max_memory_mb, _ = check_render_inputs(volume, detector, renderer, step_voxels, max_memory_mb)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.detector = detector
        self.options = dict(renderer=renderer, step_voxels=step_voxels, max_memory_mb=max_memory_mb, backend=backend)
        self.register_buffer("mu", volume.mu)
        self.register_buffer("affine", volume.affine)
        self.register_buffer("labels", volume.labels)
        self.register_buffer("densities", volume.densities if isinstance(volume, MaterialVolume) else None)
        self._template = volume
        key = tuple(id(t) for t in (self.mu, self.affine, self.labels, self.densities))
        self._built: tuple[tuple[int, ...], Volume] | None = (key, volume)  # the buffers are the volume's own

    @property
    def volume(self) -> Volume:
        """The CT as a `Volume` over the current buffers (rebuilt only after ``to``/``double``/loading)."""
        key = tuple(id(t) for t in (self.mu, self.affine, self.labels, self.densities))
        if self._built is None or self._built[0] != key:
            changes = dict(mu=self.mu, affine=self.affine, labels=self.labels)
            if self.densities is not None:
                changes["densities"] = self.densities
            self._built = (key, replace(self._template, **changes))
        return self._built[1]

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """DRRs (B, H, W) at camera_from_world ``pose`` (4, 4) or (B, 4, 4), in the dtype of ``mu``."""
        options = dict(self.options)
        return render(self.volume, self.detector, pose, options.pop("renderer"), **options)

    def extra_repr(self) -> str:
        shape = tuple(self.mu.shape)
        return (f"volume {shape[2]}x{shape[1]}x{shape[0]} voxels, detector {self.detector.rows}x{self.detector.cols}, "
                f"renderer={self.options['renderer']!r}, backend={self.options['backend']!r}")
