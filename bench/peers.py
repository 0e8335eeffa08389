"""Timing adapters for the peer DRR renderers DiffDRR and nanodrr.

Each adapter renders the same AP view of the same CT as our own renderer, so
that ``bench`` can time the peers side by side in one process:

* the X-ray source sits anterior to the patient, ``source_to_isocenter_mm``
  from the CT's centre, and the beam travels along -A (RAS);
* the principal ray passes through the CT's centre;
* the detector has ``rows x cols`` square pixels of ``pixel_spacing_mm`` at
  ``sdd_mm`` from the source.

Both peers parametrise the pose by ZXY Euler angles (here in degrees) and a
camera-centre translation relative to the CT centre; the AP view is rotation
(0, 0, 0), translation (0, source_to_isocenter_mm, 0) in both. The images are
in each peer's own units (DiffDRR integrates a [0, 1] density, nanodrr linear
attenuation coefficients), which does not matter for timing.

The peers are optional: they are imported only inside functions, so this
module imports without them and ``available_peers`` says what is missing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

PEER_NAMES = ("diffdrr-siddon", "diffdrr-trilinear", "nanodrr-pytorch", "nanodrr-triton")
# peers that need a CUDA device (nanodrr's fused Triton kernel; its `backend="triton"`)
CUDA_ONLY = ("nanodrr-triton",)


def _import_diffdrr() -> None:
    import diffdrr.data  # noqa: F401
    import diffdrr.drr  # noqa: F401
    import torchio  # noqa: F401


def _import_nanodrr() -> None:
    import nanodrr.camera  # noqa: F401
    import nanodrr.data  # noqa: F401
    import nanodrr.drr  # noqa: F401
    import torchio  # noqa: F401


def _import_nanodrr_triton() -> None:
    _import_nanodrr()
    from nanodrr.drr.backends import available

    if not available("triton"):
        raise ImportError("nanodrr's Triton backend does not import (is triton installed?)")


_IMPORTERS = {
    "diffdrr-siddon": _import_diffdrr,
    "diffdrr-trilinear": _import_diffdrr,
    "nanodrr-pytorch": _import_nanodrr,
    "nanodrr-triton": _import_nanodrr_triton,
}


def available_peers(device: str = "cpu") -> dict[str, str | None]:
    """Name -> None if the peer imports (and runs on ``device``), else the reason (the import error's text)."""
    out: dict[str, str | None] = {}
    for name in PEER_NAMES:
        if name in CUDA_ONLY and device != "cuda":
            out[name] = "runs on CUDA only"
            continue
        try:
            _IMPORTERS[name]()
            out[name] = None
        except Exception as exc:  # ImportError, or a broken install of a dependency
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


class PeerRenderer:
    """One peer, set up for one CT and one AP view.

    ``render(rotation, translation)`` is a closure around the peer's own
    objects; it takes (1, 3) tensors (ZXY Euler angles in degrees, camera
    centre in mm relative to the CT centre) and returns a (rows, cols) image.
    """

    def __init__(self, name: str, render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 source_to_isocenter_mm: float, device: str):
        self.name = name
        self._render = render
        self._rotation = torch.zeros(1, 3, device=device)
        self._translation = torch.tensor([[0.0, float(source_to_isocenter_mm), 0.0]], device=device)

    def forward(self) -> torch.Tensor:
        """Render once without autograd; returns the (rows, cols) image."""
        with torch.no_grad():
            return self._render(self._rotation, self._translation)

    def forward_backward(self) -> float:
        """Render with the 6 pose parameters requiring grad, backpropagate the
        image sum to them, and return the norm of that 6-vector gradient."""
        rotation = self._rotation.clone().requires_grad_(True)
        translation = self._translation.clone().requires_grad_(True)
        self._render(rotation, translation).sum().backward()
        return float(torch.cat([rotation.grad, translation.grad], dim=1).norm())


def _scalar_image(hu: np.ndarray, affine_ras: np.ndarray):
    """A torchio ScalarImage of ``hu`` (indexed [k, j, i]); torchio wants (C, i, j, k)."""
    from torchio import ScalarImage

    data = torch.from_numpy(np.ascontiguousarray(np.asarray(hu, dtype=np.float32).transpose(2, 1, 0)))
    return ScalarImage(tensor=data[None], affine=np.asarray(affine_ras, dtype=np.float64))


def _make_diffdrr(renderer: str, hu, affine_ras, rows, cols, sdd_mm, pixel_spacing_mm,
                  device, n_samples):
    """DiffDRR: ``read`` turns HU into its [0, 1] density, centres the CT on the
    world origin and sets the AP frame; the source then sits at the translation."""
    from diffdrr.data import read
    from diffdrr.drr import DRR

    subject = read(_scalar_image(hu, affine_ras), orientation="AP")
    drr = DRR(subject, sdd=sdd_mm, height=rows, width=cols, delx=pixel_spacing_mm,
              renderer=renderer).to(device)
    kwargs = {"n_points": n_samples} if renderer == "trilinear" else {}

    def render(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        img = drr(rotation, translation, parameterization="euler_angles", convention="ZXY",
                  degrees=True, **kwargs)
        return img[0, 0]

    return render


def _make_nanodrr(hu, affine_ras, rows, cols, sdd_mm, pixel_spacing_mm, device, n_samples, backend="torch"):
    """nanodrr with ``backend="torch"`` (its grid_sample path) or ``backend="triton"`` (its fused Triton
    kernel, CUDA only; what its "auto" picks on CUDA). The translation is relative to the subject's isocenter."""
    from nanodrr.camera import make_rt_inv
    from nanodrr.data import Subject
    from nanodrr.drr import DRR

    subject = Subject.from_images(_scalar_image(hu, affine_ras)).to(device)
    drr = DRR.from_carm_intrinsics(sdd=sdd_mm, delx=pixel_spacing_mm, dely=pixel_spacing_mm,
                                   x0=0.0, y0=0.0, height=rows, width=cols,
                                   dtype=torch.float32, device=torch.device(device))

    def render(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        rt_inv = make_rt_inv(rotation, translation, orientation="AP", isocenter=subject.isocenter)
        return drr(subject, rt_inv, n_samples=n_samples, backend=backend)[0, 0]

    return render


def make_peer(name: str, hu: np.ndarray, affine_ras: np.ndarray, rows: int, cols: int,
              sdd_mm: float, pixel_spacing_mm: float, source_to_isocenter_mm: float,
              device: str = "cpu", n_samples: int = 500) -> PeerRenderer:
    """Set up peer ``name`` (one of ``PEER_NAMES``) for an AP view of a CT.

    hu: CT in Hounsfield units, indexed [k, j, i] (as SimpleITK.GetArrayFromImage returns).
    affine_ras: 4x4 ijk -> RAS (mm) matrix of that volume.
    The source is anterior, ``source_to_isocenter_mm`` from the CT centre, beam
    along -A through the CT centre; the detector has rows x cols square pixels
    of ``pixel_spacing_mm`` at ``sdd_mm`` from the source. ``n_samples`` is the
    number of samples per ray for diffdrr-trilinear and the nanodrr renderers
    (Siddon's method visits every voxel boundary and ignores it).
    """
    if name not in PEER_NAMES:
        raise ValueError(f"unknown peer {name!r}; expected one of {PEER_NAMES}")
    if name.startswith("diffdrr-"):
        render = _make_diffdrr(name.split("-", 1)[1], hu, affine_ras, rows, cols, sdd_mm,
                               pixel_spacing_mm, device, n_samples)
    else:
        render = _make_nanodrr(hu, affine_ras, rows, cols, sdd_mm, pixel_spacing_mm,
                               device, n_samples, backend=name.split("-", 1)[1].replace("pytorch", "torch"))
    return PeerRenderer(name, render, source_to_isocenter_mm, device)
