"""Which Python requirements are missing: torch-free, for the Slicer module's first-use check.

Slicer >= 5.11 has ``slicer.packaging.pip_ensure``; on older versions the
module asks the user and installs what `missing_requirements` reports.
Only ``name``, ``name>=version`` and ``name==version`` lines are understood
(that is all ``Resources/requirements.txt`` holds); comments and options are
skipped.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(>=|==)\s*([0-9][0-9A-Za-z.]*))?\s*$")


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file, without comments, blank lines and pip options."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    return lines


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def parse_requirement(line: str) -> tuple[str, str | None, str | None]:
    """(distribution name, operator or None, version or None); ValueError for other forms."""
    match = _LINE.match(line)
    if match is None:
        raise ValueError(f"unsupported requirement {line!r}: use 'name', 'name>=version' or 'name==version'")
    return match.group(1), match.group(2), match.group(3)


def missing_requirements(requirements: list[str], installed=None) -> list[str]:
    """The requirements not satisfied by the installed distributions.

    ``installed(name) -> version or None`` defaults to importlib.metadata.
    """
    def installed_version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    lookup = installed or installed_version
    missing = []
    for line in requirements:
        name, op, wanted = parse_requirement(line)
        have = lookup(name)
        if have is None:
            missing.append(line)
        elif op == ">=" and _version_tuple(have) < _version_tuple(wanted):
            missing.append(line)
        elif op == "==" and _version_tuple(have) != _version_tuple(wanted):
            missing.append(line)
    return missing
