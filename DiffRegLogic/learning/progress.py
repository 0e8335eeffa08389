"""Machine-readable progress lines of a training run, and a human line for each (torch-free).

The training loop (`DiffRegLogic.learning.trainer.train`) reports through a
callable that receives plain dicts with an ``"event"`` key; the command line
tool prints each as one JSON object per line (`progress_line`), and the
Slicer panel reads the background process's output back with
`parse_progress_line`, which skips everything that is not such a record
(tqdm's bar, warnings, tracebacks). `format_progress` turns a record into a
short line for a status label.

This module imports neither torch nor numpy: the Slicer bridge loads it in
the GUI process, where torch may not be installed yet.

Events and their fields (numbers are JSON numbers; ``null`` where unknown):

* ``start``: ``steps`` (int or null), ``minutes`` (float or null),
  ``image_size``, ``batch_size``, ``world_size``, ``device``, ``resumed_step``;
* ``progress``: ``step``, ``steps``, ``fraction`` (0..1 of the budget),
  ``elapsed_s``, ``eta_s``, ``loss``, ``pose_loss`` (deg + mm),
  ``structure_loss`` (null without decoder), ``lr``, ``images_per_s``,
  ``stage`` (pool stages rendered so far), ``val_mtre_mm`` (last validation
  median mTRE, null before the first);
* ``validation``: ``step``, ``elapsed_s``, ``mtre_mm_median``,
  ``mtre_mm_mean``, ``rotation_deg_median``, ``translation_mm_median``, ...;
* ``checkpoint``: ``step``, ``path``;
* ``done``: ``step``, ``elapsed_s``, ``mtre_mm_median``, ``path``.

A learned similarity's training (``diffreg train --kind similarity``)
reports the same events; its quality is a cosine (the correlation of the
learned similarity with the true pose distance, 1 = perfect) where the
pose network's is an mTRE:

* ``progress``: ``step``, ``steps``, ``fraction``, ``elapsed_s``,
  ``eta_s``, ``loss``, ``lr``, ``images_per_s``, ``val_cosine`` (last
  validation cosine, null before the first);
* ``validation``: ``step``, ``cosine``, ``baseline_cosine`` (an image
  similarity's, for comparison), ``distance_corr``;
* ``done``: ``step``, ``elapsed_s``, ``cosine``, ``path``.

`format_progress` tells the two apart by the fields a record has: a record
with ``val_cosine`` or ``cosine`` is shown with "val cosine 0.71" /
"cosine 0.71" instead of an mTRE.
"""

from __future__ import annotations

import json
import math

EVENTS = ("start", "progress", "validation", "checkpoint", "done")

__all__ = ["EVENTS", "progress_line", "parse_progress_line", "format_progress"]


def _clean(value):
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, other objects -> str."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    try:  # numpy / torch scalars without importing them
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def progress_line(event: str, **fields) -> str:
    """One progress record as a single JSON line (no trailing newline), ``{"event": event, **fields}``.

    Non-finite numbers become ``null`` (JSON has no NaN); the line never
    contains a newline, so a reader can split the output by lines.
    """
    if not isinstance(event, str) or not event:
        raise ValueError(f"event must be a non-empty string, got {event!r}")
    record = {"event": event}
    record.update({k: _clean(v) for k, v in fields.items() if k != "event"})
    return json.dumps(record, allow_nan=False, separators=(", ", ": "))


def parse_progress_line(line: str) -> dict | None:
    """The record of a line `progress_line` wrote, or None for any other line (tqdm output, logs, blank lines).

    Leading/trailing whitespace and carriage returns (tqdm redraws with
    ``\\r``) are ignored; a record is a JSON object with a string ``"event"``.
    """
    if not isinstance(line, str):
        return None
    text = line.strip().rsplit("\r", 1)[-1].strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    return record


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(float(seconds))))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value, spec: str, unit: str = "") -> str:
    return "?" if value is None else f"{float(value):{spec}}{unit}"


def _cosine(record: dict, key: str) -> bool:
    """Whether a record reports a learned similarity's cosine (the field is there, even as null) and no mTRE."""
    return key in record and not any(k in record for k in ("val_mtre_mm", "mtre_mm_median"))


def format_progress(record: dict) -> str:
    """A short human-readable line for a progress record (the Slicer panel's status text).

    A pose network's records show the validation mTRE (mm), a learned
    similarity's (fields ``val_cosine`` / ``cosine``) the validation cosine.
    """
    event = record.get("event")
    if event == "start":
        budget = (f"{record['steps']} steps" if record.get("steps") is not None
                  else f"{_number(record.get('minutes'), 'g')} min")
        return (f"Training started: {budget}, {record.get('image_size', '?')} px, batch "
                f"{record.get('batch_size', '?')} on {record.get('device', '?')}")
    if event == "progress":
        steps = record.get("steps")
        step = f"step {record.get('step', '?')}" + (f"/{steps}" if steps is not None else "")
        percent = _number(None if record.get("fraction") is None else 100 * record["fraction"], ".0f", "%")
        quality = (f"val cosine {_number(record.get('val_cosine'), '.2f')}" if _cosine(record, "val_cosine") else
                   f"val mTRE {_number(record.get('val_mtre_mm'), '.1f', ' mm')}")
        return (f"{percent} {step}, loss {_number(record.get('loss'), '.3g')}, {quality}, elapsed "
                f"{_duration(record.get('elapsed_s'))}, ETA {_duration(record.get('eta_s'))}")
    if event == "validation" and _cosine(record, "cosine"):
        text = f"Validation at step {record.get('step', '?')}: cosine {_number(record.get('cosine'), '.2f')}"
        if record.get("baseline_cosine") is not None:
            text += f" (baseline {_number(record['baseline_cosine'], '.2f')})"
        if record.get("distance_corr") is not None:
            text += f", distance correlation {_number(record['distance_corr'], '.2f')}"
        return text
    if event == "validation":
        return (f"Validation at step {record.get('step', '?')}: median mTRE "
                f"{_number(record.get('mtre_mm_median'), '.2f', ' mm')}, rotation "
                f"{_number(record.get('rotation_deg_median'), '.2f', ' deg')}, translation "
                f"{_number(record.get('translation_mm_median'), '.2f', ' mm')}")
    if event == "checkpoint":
        return f"Checkpoint at step {record.get('step', '?')}: {record.get('path', '?')}"
    if event == "done":
        quality = (f"cosine {_number(record.get('cosine'), '.2f')}" if _cosine(record, "cosine") else
                   f"median mTRE {_number(record.get('mtre_mm_median'), '.2f', ' mm')}")
        return (f"Training done: {record.get('step', '?')} steps in {_duration(record.get('elapsed_s'))}, {quality}"
                + (f", saved {record['path']}" if record.get("path") else ""))
    return json.dumps(record)
