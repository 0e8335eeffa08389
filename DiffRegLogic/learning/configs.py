"""The one check every learning config's ``from_dict`` makes: a mapping whose keys are the dataclass's fields."""

from __future__ import annotations

from dataclasses import fields
from typing import Mapping

from ..errors import InputError


def known_fields(cls, data, what: str) -> dict:
    """``data`` as a plain dict, after refusing a non-mapping or keys that are not fields of ``cls`` (InputError).

    ``what`` names the config in the message ("network config", "pose range", ...).
    """
    if not isinstance(data, Mapping):
        raise InputError(f"a {what} must be a mapping of its fields, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown {what} key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return dict(data)
