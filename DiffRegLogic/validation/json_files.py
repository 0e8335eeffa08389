"""One validated reader for the JSON files DiffReg reads (detector geometry, poses): never a traceback.

A file is refused with `InputError`, naming the file and what to change, when
it is missing or a folder, larger than `limits.MAX_JSON_BYTES`, not UTF-8
text (UTF-16 and Latin-1 are recognised and named), nested deeper than
`limits.MAX_JSON_DEPTH`, not valid JSON, holds ``NaN``/``Infinity`` (not JSON
numbers, though Python's parser accepts them) or numbers beyond float range,
or is not a JSON object at the top. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import InputError
from ..limits import MAX_JSON_BYTES, MAX_JSON_DEPTH

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def json_depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (a number is 0, ``[1]`` is 1); stops counting past ``limit``."""
    depth, level = 0, [(value, 0)]
    while level:
        item, d = level.pop()
        depth = max(depth, d)
        if depth > limit:
            return depth
        if isinstance(item, dict):
            level.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            level.extend((v, d + 1) for v in item)
    return depth


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _constant(text: str):
    raise _NotFinite(text)


class _NotFinite(ValueError):
    pass


def _looks_utf16(raw: bytes) -> bool:
    """A UTF-16 byte-order mark, or text whose every other byte is zero (ASCII in UTF-16 without one)."""
    if raw.startswith(_UTF16_BOMS):
        return True
    head = raw[:512]
    return len(head) >= 4 and any(head[i::2].count(0) >= 0.9 * len(head[i::2]) for i in (0, 1))


def _decode(raw: bytes, where: str) -> str:
    if _looks_utf16(raw):
        raise InputError(f"{where} is UTF-16 text; save it as UTF-8")
    if b"\x00" in raw:
        raise InputError(f"{where} holds binary data (NUL bytes at offset {raw.index(0)}); it is not a JSON text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start]
        hint = " (Latin-1 or another 8-bit encoding?)" if 0x80 <= bad <= 0xFF and b"\x00" not in raw else ""
        raise InputError(f"{where} is not UTF-8 text: byte 0x{bad:02x} at offset {exc.start}{hint}; "
                         "save it as UTF-8 JSON") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path`` (a ``what`` file, e.g. "geometry", "pose"), checked as the module says."""
    path = Path(path)
    where = f"{what} file {path}"
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if path.is_dir():
        raise InputError(f"{where} is a folder; give the JSON file inside it")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InputError(f"{where} is {size} bytes; a {what} file is a few hundred bytes "
                             f"(the limit is {MAX_JSON_BYTES}): is it the right file?")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(raw) > MAX_JSON_BYTES:  # a file that grew, or a device/pipe without a size
        raise InputError(f"{where} is larger than {MAX_JSON_BYTES} bytes: is it the right file?")
    text = _decode(raw, where)
    if not text.strip():
        raise InputError(f"{where} is empty; it must hold a JSON object (see docs/formats.md)")
    try:
        data = json.loads(text, parse_float=_finite_float, parse_constant=_constant)
    except _NotFinite as exc:
        raise InputError(f"{where} holds the number {exc.args[0]}; JSON numbers must be finite") from None
    except RecursionError:
        raise InputError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels; it is not a {what} file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer of more than 4300 digits (int_max_str_digits)
        raise InputError(f"{where} holds a number that cannot be read: {exc}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise InputError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels; it is not a {what} file")
    if not isinstance(data, dict):
        raise InputError(f"{where} must hold a JSON object, got {type(data).__name__}")
    return data
