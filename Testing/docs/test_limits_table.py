"""The user guide's table of accepted ranges states the numbers `DiffRegLogic.limits` enforces."""

from __future__ import annotations

from pathlib import Path

from DiffRegLogic import limits

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def _table() -> str:
    text = GUIDE.read_text()
    start = text.index("| quantity | accepted |")
    return text[start:text.index("\n\n", start)]


def test_every_limit_in_the_table_is_the_one_enforced():
    table = _table()
    numbers = [limits.MAX_DETECTOR_SIDE, limits.MAX_DETECTOR_PIXELS, *limits.SDD_RANGE_MM,
               *limits.PIXEL_SPACING_RANGE_MM, limits.MAX_PRINCIPAL_POINT_PX, limits.MAX_TRANSLATION_MM,
               limits.MAX_VOLUME_VOXELS, *limits.VOXEL_SPACING_RANGE_MM, *limits.STEP_VOXELS_RANGE,
               limits.MAX_SAMPLES_PER_RAY, *limits.MEMORY_MB_RANGE, *limits.PHOTONS_RANGE, limits.MAX_BLUR_PX,
               limits.MAX_ITERATIONS, limits.MAX_STARTS, limits.MAX_START_PIXELS,
               limits.MIN_DETECTOR_SIDE_REGISTRATION, *limits.SEED_RANGE, limits.MAX_JSON_BYTES,
               limits.MAX_JSON_DEPTH]
    for value in numbers:
        shown = {f"{value:g}"} | ({str(int(value))} if float(value).is_integer() else set())
        assert any(s in table for s in shown), f"{value} ({shown}) is not in the user guide's limits table"
