"""The ranges DiffReg accepts for every user-given size and number, and one checker that names what is wrong.

Every entry point (the Python API, the command line tool, the Slicer
bridge) checks against these same numbers, so a value refused in one place
is refused everywhere with the same reason. The limits are wide: far beyond
any clinical C-arm, CT or registration setting, and well inside what the
renderers can finish in finite time and memory. Torch-free.
"""

from __future__ import annotations

import math
import numbers

from .errors import InputError

# Detector (X-ray image) and geometry
MAX_DETECTOR_SIDE = 16384
"""Pixels per detector row or column (flat panels have up to ~3000)."""
MAX_DETECTOR_PIXELS = 8192 * 8192
"""Pixels per detector image (67 M)."""
MIN_DETECTOR_SIDE_REGISTRATION = 4
"""Smallest side (pixels) of a pyramid level a registration may run on."""
SDD_RANGE_MM = (1.0, 100_000.0)
"""Source-to-detector distance, mm."""
PIXEL_SPACING_RANGE_MM = (1e-4, 100.0)
"""Detector pixel spacing, mm."""
MAX_PRINCIPAL_POINT_PX = 1e6
"""|principal point| in pixels."""
MAX_TRANSLATION_MM = 1e6
"""|translation| of a pose, mm (1 km)."""

# Volume
MAX_VOLUME_VOXELS = 2**31
"""Voxels of one CT."""
VOXEL_SPACING_RANGE_MM = (1e-4, 1000.0)
"""CT voxel spacing, mm."""

# Rendering
STEP_VOXELS_RANGE = (0.01, 100.0)
"""Trilinear step length, voxels."""
MAX_SAMPLES_PER_RAY = 100_000
"""Samples (trilinear) or crossings (Siddon) along one ray."""
MEMORY_MB_RANGE = (1.0, 1e7)
"""Working-memory budget per detector tile, MB."""
PHOTONS_RANGE = (1.0, 1e12)
"""Photons per unattenuated pixel of simulated quantum noise."""
MAX_BLUR_PX = 1000.0
"""Detector blur (Gaussian sigma) in pixels."""

# Registration
MAX_ITERATIONS = 100_000
"""Iterations per level."""
MAX_STARTS = 1000
"""Starts of one registration (multi-start)."""
MAX_START_PIXELS = 2**30
"""Starts x pixels of the coarsest level, rendered together per iteration."""
SEED_RANGE = (0, 2**32 - 1)
"""Seeds of random starts and noise (numpy's range)."""

# Files
MAX_JSON_BYTES = 1_000_000
"""A geometry or pose JSON file (a pose is ~300 bytes)."""
MAX_JSON_DEPTH = 32
"""Nesting of a JSON file."""


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 integer: bool = False, low_open: bool = False, unit: str = "") -> float | int:
    """``value`` as a float (or int when ``integer``), if it is a finite number in [low, high].

    ``low_open`` makes the lower bound exclusive (``> low``). Raises
    `InputError` naming ``name``, the range and the value otherwise; booleans
    and strings are not numbers.
    """
    unit = f" {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    if integer:
        if isinstance(value, numbers.Integral):
            number = int(value)
        elif math.isfinite(float(value)) and float(value).is_integer():
            number = int(value)
        else:
            raise InputError(f"{name} must be a whole number, got {value!r}")
    else:
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            raise InputError(f"{name} must be a finite number, got an integer of {_digits(value)} digits") from None
        if not math.isfinite(number):
            raise InputError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and number > high
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}{unit}"
        hi = "" if high is None else f"<= {high:g}{unit}"
        shown = value
        if isinstance(value, numbers.Integral) and abs(number) >= 10**15:  # an integer too long to show (or to float)
            shown = f"an integer of {_digits(number)} digits"
        raise InputError(f"{name} must be {' and '.join(s for s in (lo, hi) if s)}, got {shown}{unit}")
    return number


def _digits(value: int) -> int:
    """Decimal digits of an integer, also beyond Python's int-to-str limit (4300 digits)."""
    value = abs(int(value))
    digits = max(1, int(value.bit_length() * 0.30102999566398120))
    return digits + (value >= 10**digits)
