"""Which Python requirements are missing: torch-free, for the Slicer module's first-use check.

Slicer >= 5.11 has ``slicer.packaging.pip_ensure``; on older versions the
module asks the user and installs what `missing_requirements` reports.
Requirement lines are parsed and compared with ``packaging`` (PEP 508
names, any version specifier, environment markers); comments, blank lines
and pip options are skipped.
"""

from __future__ import annotations

import os
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file, without comments, blank lines and pip options."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    return lines


def parse_requirement(line: str) -> Requirement:
    """The `packaging` Requirement of one line; ValueError saying what is wrong otherwise."""
    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise ValueError(f"unsupported requirement {line!r}: {exc}") from exc


def missing_requirements(requirements: list[str], installed=None) -> list[str]:
    """The requirements not satisfied by the installed distributions (markers that do not apply are skipped).

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
        requirement = parse_requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        have = lookup(requirement.name)
        if have is None:
            missing.append(line)
            continue
        try:
            version = Version(have)
        except InvalidVersion:
            missing.append(line)  # an installed version that cannot be compared: reinstall to be sure
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing
