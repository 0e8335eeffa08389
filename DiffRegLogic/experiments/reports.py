"""Reports of the experiments: CSV tables, Markdown tables, PNG panels (one place for the three formats)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..figures.composites import save_png
from ..figures.plots import line_plot

__all__ = ["round_cell", "fmt", "markdown_table", "write_csv", "stack_panels", "save_png", "line_plot"]


def round_cell(value: float, digits: int) -> float | str:
    """``value`` rounded for a CSV/Markdown cell; NaN and inf as text."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return round(value, digits)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def stack_panels(panels: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(panels), axis=0)
