"""Random degradations that push clean DRR line integrals towards converted real X-rays, drawn per image.

A real X-ray reaches the network after DiffReg's intensity-convention step
(`DiffRegLogic.xray.convention`): as line integrals -log(I/I0), bone bright.
`augment` gives each training DRR (n, H, W) what such an image has and a
DRR lacks, each with its own probability and a strength drawn per image,
in the order the physics and the processing happen:

1. **occluders** (instruments the CT never saw): 1..k thin rods, curved
   wires or discs added to the line integrals, with the closed-form metal
   paths of `DiffRegLogic.physics.instruments` (``Wire``: 2 sqrt(r^2 - d^2)
   at distance d from the axis; ``Disc``: constant inside) in pixel units,
   vectorised over the batch, scaled so the core of each adds
   ``strength x max(image)``;
2. in the intensity domain ``I = exp(-s p)``, with ``s = min(1,
   max_line_integral / max(p))`` (physical line integrals stay as they
   are; a CT in other units is brought to a plausible attenuation range):
   **scatter** ``I + f G_sigma * I`` (the single-kernel model of
   `DiffRegLogic.physics.realism`: a flat field gets scatter-to-primary
   ratio f), **quantum noise** ``I + sqrt(I / N0) z`` (the Gaussian limit of
   Poisson(N0 I) / N0, z standard normal; N0 photons per unattenuated
   pixel), **detector blur** ``G_sigma * I``; then back, ``p = -log(max(I,
   floor)) / s`` with floor = half a photon (0.5 / N0) or 1e-12;
3. **collimation**: blades cover a band along each border (its own width
   per side) filled with the constant ``level x max(image)``;
4. **window and gamma** (display processing): between the per-image
   percentiles (low, high), ``v = clip((p - lo) / (hi - lo), 0, 1) ** gamma``,
   mapped back onto [lo, hi] (the formulas of `physics.processing.window_level`
   and `apply_gamma`, drawn per image);
5. **inversion** (a polarity the convention step missed):
   `physics.processing.invert`, ``min + max - p``.

Spatial sizes are fractions of the image's longer side (resolution-free);
blur and scatter use the kernels of `DiffRegLogic.filters.gaussian_blur`,
batched over images of different sigmas by FFT (`_blur_batch`).
Randomness comes only from the caller's `torch.Generator` (drawn on its
device, then moved to the images'), so the same generator state gives the
same images and two draws of one image differ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import torch

from ..errors import InputError
from ..filters import blur_radius, gaussian_taps, replicate
from ..limits import PHOTONS_RANGE, check_number
from ..physics.processing import GAMMA_RANGE, invert
from .configs import known_fields

WINDOW_SAMPLES = 4096
"""Window percentiles are taken over at most this many evenly strided pixels of each image."""
_PROBABILITIES = ("noise_probability", "blur_probability", "scatter_probability", "window_probability",
                  "inversion_probability", "collimation_probability", "occluder_probability")
_RANGES = {  # field: (lowest, highest, what)
    "photons_range": (PHOTONS_RANGE[0], PHOTONS_RANGE[1], "photons per unattenuated pixel (log-uniform)"),
    "blur_sigma_range": (0.0, 0.1, "detector blur sigma, fraction of the image side"),
    "scatter_fraction_range": (0.0, 100.0, "scatter-to-primary ratio"),
    "scatter_sigma_range": (0.0, 1.0, "scatter kernel sigma, fraction of the image side"),
    "gamma_range": (GAMMA_RANGE[0], GAMMA_RANGE[1], "display gamma (log-uniform)"),
    "window_low_range": (0.0, 49.0, "low window percentile"),
    "window_high_range": (51.0, 100.0, "high window percentile"),
    "collimation_band_range": (0.0, 0.45, "blade band width per side, fraction of the image side"),
    "collimation_level_range": (-10.0, 10.0, "blade fill, times the image's maximum"),
    "occluder_count_range": (1, 50, "occluders per image"),
    "occluder_strength_range": (0.0, 100.0, "an occluder's core line integral, times the image's maximum"),
    "occluder_radius_range": (1e-4, 0.1, "rod and wire radius, fraction of the image side (discs: 3x)"),
    "occluder_length_range": (1e-3, 2.0, "rod and wire length, fraction of the image side"),
}


@dataclass(frozen=True)
class Augmentation:
    """Probabilities (per image, in [0, 1]) and strength ranges (lo, hi) of `augment`'s steps (module docstring).

    ``Augmentation()`` is the training default (`DEFAULT_AUGMENTATION`);
    `NO_AUGMENTATION` has every probability 0. Checked on construction:
    probabilities in [0, 1], every range two numbers lo <= hi inside its
    bounds (`InputError` naming the field). ``max_line_integral`` (> 0)
    caps the attenuation the intensity-domain steps see (see the module docstring).
    """

    noise_probability: float = 0.5
    photons_range: tuple[float, float] = (1e3, 1e5)
    blur_probability: float = 0.3
    blur_sigma_range: tuple[float, float] = (0.002, 0.01)
    scatter_probability: float = 0.5
    scatter_fraction_range: tuple[float, float] = (0.05, 1.0)
    scatter_sigma_range: tuple[float, float] = (0.05, 0.2)
    window_probability: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    window_low_range: tuple[float, float] = (0.0, 5.0)
    window_high_range: tuple[float, float] = (95.0, 100.0)
    inversion_probability: float = 0.05
    collimation_probability: float = 0.3
    collimation_band_range: tuple[float, float] = (0.0, 0.15)
    collimation_level_range: tuple[float, float] = (0.0, 1.2)
    occluder_probability: float = 0.3
    occluder_count_range: tuple[int, int] = (1, 4)
    occluder_strength_range: tuple[float, float] = (0.2, 1.0)
    occluder_radius_range: tuple[float, float] = (0.003, 0.015)
    occluder_length_range: tuple[float, float] = (0.1, 0.5)
    max_line_integral: float = 8.0

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            object.__setattr__(self, name, check_number(name, getattr(self, name), 0.0, 1.0))
        for name, (low, high, what) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
                raise InputError(f"{name} must be a pair (lo, hi) of {what}, got {value!r:.80}")
            integer = name == "occluder_count_range"
            lo, hi = (check_number(name, v, low, high, integer=integer) for v in value)
            if lo > hi:
                raise InputError(f"{name} must have lo <= hi ({what}), got ({lo:g}, {hi:g})")
            object.__setattr__(self, name, (lo, hi))
        object.__setattr__(self, "max_line_integral", check_number("max_line_integral", self.max_line_integral,
                                                                   0.0, 1e3, low_open=True))

    @property
    def is_identity(self) -> bool:
        """True when no step can happen (every probability 0)."""
        return all(getattr(self, name) == 0 for name in _PROBABILITIES)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (ranges as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Augmentation":
        """Inverse of `to_dict`; missing keys take the defaults, unknown keys raise InputError."""
        data = known_fields(cls, data, "augmentation")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


DEFAULT_AUGMENTATION = Augmentation()
"""The training default."""
NO_AUGMENTATION = Augmentation(**{name: 0.0 for name in _PROBABILITIES})
"""Every probability 0: `augment` returns its input unchanged."""


# ---------------------------------------------------------------------------- random draws


class _Draws:
    """Uniform draws from the caller's generator, moved to the images' device."""

    def __init__(self, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> None:
        self.generator, self.device, self.dtype = generator, device, dtype

    def uniform(self, *shape: int) -> torch.Tensor:
        u = torch.rand(*shape, generator=self.generator, device=self.generator.device, dtype=torch.float64)
        return u.to(self.device)

    def normal(self, *shape: int) -> torch.Tensor:
        z = torch.randn(*shape, generator=self.generator, device=self.generator.device, dtype=self.dtype)
        return z.to(self.device)

    def chosen(self, probability: float, n: int) -> torch.Tensor:
        """Indices (m,) of the images that get a step of this probability."""
        return torch.nonzero(self.uniform(n) < probability).flatten()


def _between(u, span: tuple[float, float], log: bool = False):
    """Uniform draws u in [0, 1) (float or tensor) mapped onto [lo, hi] (log-uniformly with ``log``)."""
    lo, hi = span
    if log:
        exp = math.exp if isinstance(u, float) else torch.exp
        return exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def _peak(p: torch.Tensor) -> torch.Tensor:
    """Per-image maximum (m, 1, 1)."""
    return p.flatten(1).amax(1)[:, None, None]


# ---------------------------------------------------------------------------- the steps


def _segment_d2(x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Squared distance (K, H, W) of grid points from segments p -> q (K, 2) (as `physics.instruments.Wire`)."""
    ex, ey = (q[:, 0] - p[:, 0])[:, None, None], (q[:, 1] - p[:, 1])[:, None, None]
    dx, dy = x - p[:, 0, None, None], y - p[:, 1, None, None]
    t = ((dx * ex + dy * ey) / (ex * ex + ey * ey).clamp_min(1e-12)).clamp(0, 1)
    return (dx - t * ex) ** 2 + (dy - t * ey) ** 2


def _occluders(p: torch.Tensor, aug: Augmentation, draws: _Draws) -> torch.Tensor:
    """Add rods/wires/discs to each image (vectorised over all occluders of the batch).

    A rod is a straight wire, a wire a polyline of two segments bent by up to
    +-20 % of its length; both add ``2 sqrt(r^2 - d^2)`` (d = distance from the
    axis: the path of `physics.instruments.Wire`) scaled to ``strength`` at the
    core; a disc of radius 3 r adds ``strength`` inside it (`Disc`).
    """
    m, h, w = p.shape
    side = float(max(h, w))
    lo, hi = aug.occluder_count_range
    counts = (lo + (draws.uniform(m) * (hi - lo + 1)).floor().clamp(max=hi - lo)).long()
    owner = torch.repeat_interleave(torch.arange(m, device=p.device), counts)
    u = draws.uniform(owner.numel(), 8).to(p.dtype)
    kind = (u[:, 0] * 3).floor().clamp(max=2)
    center = torch.stack([u[:, 1] * (w - 1), u[:, 2] * (h - 1)], -1)
    angle = math.pi * u[:, 3]
    strength = _between(u[:, 4], aug.occluder_strength_range) * _peak(p)[owner, 0, 0].clamp_min(0)
    radius = _between(u[:, 5], aug.occluder_radius_range) * side
    length = _between(u[:, 6], aug.occluder_length_range) * side
    direction = torch.stack([angle.cos(), angle.sin()], -1)
    normal = torch.stack([-angle.sin(), angle.cos()], -1)
    half = direction * (length / 2)[:, None]
    bend = torch.where(kind == 1, (u[:, 7] - 0.5) * 0.4 * length, torch.zeros_like(length))
    start, mid, end = center - half, center + normal * bend[:, None], center + half
    y, x = torch.meshgrid(torch.arange(h, dtype=p.dtype, device=p.device),
                          torch.arange(w, dtype=p.dtype, device=p.device), indexing="ij")
    out = p.clone()
    chunk = max(1, (1 << 20) // (h * w))  # at most ~1 M grid values per pass (a few tens of MB of temporaries)
    for s0 in range(0, owner.numel(), chunk):
        sl = slice(s0, s0 + chunk)
        r = radius[sl, None, None]
        d2 = torch.minimum(_segment_d2(x, y, start[sl], mid[sl]), _segment_d2(x, y, mid[sl], end[sl]))
        line = (r * r - d2).clamp_min(0).sqrt() / r  # 2 sqrt(r^2 - d^2) / (2 r): 1 on the axis
        c2 = (x - center[sl, 0, None, None]) ** 2 + (y - center[sl, 1, None, None]) ** 2
        disc = (c2 <= (3 * r) ** 2).to(p.dtype)
        shape = torch.where(kind[sl, None, None] == 2, disc, line)
        out.index_add_(0, owner[sl], strength[sl, None, None] * shape)
    return out


def _fft_length(n: int) -> int:
    """The smallest m 2^k >= n with m in (1, 3, 5, 9, 15): a length FFTs handle fast."""
    return min(m << max(0, math.ceil(math.log2(n / m))) for m in (1, 3, 5, 9, 15))


def _blur_batch(images: torch.Tensor, sigmas_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image (m, H, W) with its own sigma (m,) in pixels, batched by FFT.

    Each image gets the kernel of `DiffRegLogic.filters.gaussian_blur`
    (sampled, cut at its own radius int(4 sigma + 0.5), normalised) and
    replicated borders, so the result equals that function's to rounding.
    """
    sigmas = sigmas_px.detach().double().cpu().tolist()
    radii = [blur_radius(s) if s > 0 else 0 for s in sigmas]
    big = max(radii)
    if big == 0:
        return images
    taps = torch.zeros(len(sigmas), 2 * big + 1, dtype=torch.float64)
    for i, (s, r) in enumerate(zip(sigmas, radii)):
        taps[i, big - r:big + r + 1] = torch.tensor(gaussian_taps(s, r) if r > 0 else [1.0], dtype=torch.float64)
    taps = taps.to(device=images.device, dtype=images.dtype)
    out = images
    for dim in (-2, -1):
        n = out.shape[dim]
        padded = replicate(out, big, dim)
        length = _fft_length(padded.shape[dim] + 2 * big)
        kernel = torch.fft.rfft(taps, n=length, dim=-1)
        kernel = kernel[:, :, None] if dim == -2 else kernel[:, None, :]
        spectrum = torch.fft.rfft(padded, n=length, dim=dim) * kernel
        out = torch.fft.irfft(spectrum, n=length, dim=dim).narrow(dim, 2 * big, n)
    return out


def _scale(p: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """Per-image s (m, 1, 1): 1, or less so that s max(p) <= max_line_integral."""
    return (aug.max_line_integral / _peak(p).clamp_min(1e-12)).clamp(max=1.0)


def _intensity_steps(p: torch.Tensor, aug: Augmentation, draws: _Draws) -> torch.Tensor:
    """Scatter, quantum noise and detector blur in the intensity domain (module docstring, step 2)."""
    n, h, w = p.shape
    side = float(max(h, w))
    chosen, params = [], []
    for probability, columns in ((aug.scatter_probability, 2), (aug.noise_probability, 1), (aug.blur_probability, 1)):
        if probability > 0:
            chosen.append(draws.uniform(n) < probability)
            params.append(draws.uniform(n, columns).to(p.dtype))
        else:
            chosen.append(torch.zeros(n, dtype=torch.bool, device=p.device))
            params.append(torch.zeros(n, columns, dtype=p.dtype, device=p.device))
    touched = torch.nonzero(chosen[0] | chosen[1] | chosen[2]).flatten()
    if touched.numel() == 0:
        return p
    (scatter, noise, blur), (s_u, n_u, b_u) = (c[touched] for c in chosen), (q[touched] for q in params)
    sub = p[touched]
    s = _scale(sub, aug)
    intensity = torch.exp(-s * sub)
    floor = torch.full((touched.numel(), 1, 1), 1e-12, dtype=p.dtype, device=p.device)
    if scatter.any():
        fraction = _between(s_u[scatter, 0], aug.scatter_fraction_range)[:, None, None]
        sigma = _between(s_u[scatter, 1], aug.scatter_sigma_range) * side
        intensity[scatter] = intensity[scatter] + fraction * _blur_batch(intensity[scatter], sigma)
    if noise.any():
        photons = _between(n_u[noise, 0], aug.photons_range, log=True)[:, None, None]
        counted = intensity[noise]
        z = draws.normal(counted.shape[0], h, w)
        intensity[noise] = counted + (counted.clamp_min(0) / photons).sqrt() * z
        floor[noise] = 0.5 / photons
    if blur.any():
        intensity[blur] = _blur_batch(intensity[blur], _between(b_u[blur, 0], aug.blur_sigma_range) * side)
    out = p.clone()
    out[touched] = -torch.log(torch.maximum(intensity, floor)) / s
    return out


def _collimation(p: torch.Tensor, aug: Augmentation, draws: _Draws) -> torch.Tensor:
    m, h, w = p.shape
    u = draws.uniform(m, 5)
    bands = _between(u[:, :4], aug.collimation_band_range)  # top, bottom, left, right
    top, bottom = (bands[:, 0] * h).round(), (bands[:, 1] * h).round()
    left, right = (bands[:, 2] * w).round(), (bands[:, 3] * w).round()
    rows = torch.arange(h, device=p.device, dtype=torch.float64)[None, :, None]
    cols = torch.arange(w, device=p.device, dtype=torch.float64)[None, None, :]
    blocked = ((rows < top[:, None, None]) | (rows >= h - bottom[:, None, None])
               | (cols < left[:, None, None]) | (cols >= w - right[:, None, None]))
    fill = _between(u[:, 4], aug.collimation_level_range).to(p.dtype)[:, None, None] * _peak(p)
    return torch.where(blocked, fill, p)


def _window_gamma(p: torch.Tensor, aug: Augmentation, draws: _Draws) -> torch.Tensor:
    m = p.shape[0]
    u = draws.uniform(m, 3)
    gamma = _between(u[:, 0], aug.gamma_range, log=True).to(p.dtype)[:, None, None]
    flat = p.flatten(1)
    if flat.shape[1] > WINDOW_SAMPLES:  # percentiles of an evenly strided subset of the pixels
        flat = flat[:, ::math.ceil(flat.shape[1] / WINDOW_SAMPLES)]
    flat = flat.sort(dim=1).values
    last = flat.shape[1] - 1
    low = (_between(u[:, 1], aug.window_low_range) / 100 * last).round().long()
    high = (_between(u[:, 2], aug.window_high_range) / 100 * last).round().long()
    lo = flat.gather(1, low[:, None])[:, :, None]
    hi = flat.gather(1, high[:, None])[:, :, None]
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    v = ((p - lo) / width).clamp(0, 1) ** gamma
    return lo + v * width


def augment(line_integrals: torch.Tensor, augmentation: Augmentation | None,
            generator: torch.Generator) -> torch.Tensor:
    """Degraded copies (n, H, W) of DRR line integrals (n, H, W), same dtype and device (module docstring).

    ``augmentation`` None or with every probability 0 returns the input
    itself. Computation runs in float64 for float64 input, else float32.
    """
    if augmentation is not None and not isinstance(augmentation, Augmentation):
        raise InputError(f"augmentation must be an Augmentation or None, got {type(augmentation).__name__}")
    if not isinstance(line_integrals, torch.Tensor) or not line_integrals.is_floating_point() \
            or line_integrals.ndim != 3:
        got = tuple(line_integrals.shape) if isinstance(line_integrals, torch.Tensor) else \
            type(line_integrals).__name__
        raise InputError(f"line_integrals must be a floating-point tensor (n, H, W), got {got}")
    if augmentation is None or augmentation.is_identity or line_integrals.shape[0] == 0:
        return line_integrals
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator (seed it: torch.Generator().manual_seed(seed)), "
                         f"got {type(generator).__name__}")
    dtype = torch.float64 if line_integrals.dtype == torch.float64 else torch.float32
    p = line_integrals.detach().to(dtype)
    if not torch.isfinite(p).all():
        raise InputError("line_integrals contain NaN or infinite values")
    draws = _Draws(generator, p.device, dtype)
    n = p.shape[0]
    aug = augmentation

    def step(probability: float, function) -> None:
        nonlocal p
        if probability <= 0:
            return
        chosen = draws.chosen(probability, n)
        if chosen.numel():
            p = p.clone()
            p[chosen] = function(p[chosen], aug, draws)

    step(aug.occluder_probability, _occluders)
    p = _intensity_steps(p, aug, draws)
    step(aug.collimation_probability, _collimation)
    step(aug.window_probability, _window_gamma)
    step(aug.inversion_probability, lambda q, _a, _d: invert(q))
    return p.to(line_integrals.dtype)
