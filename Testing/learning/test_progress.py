"""JSON progress lines (`DiffRegLogic.learning.progress`): torch-free, one record per line, round trip, human lines.

Truth: the records are written out by hand (expected dicts), the parser is
fed the kinds of lines a training process prints besides them (tqdm's
carriage-return redraws, warnings, JSON that is not a record), and the
import check runs in a fresh interpreter and lists the modules it loaded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from DiffRegLogic.learning.progress import EVENTS, format_progress, parse_progress_line, progress_line


def test_import_loads_neither_torch_nor_numpy():
    code = ("import sys; import DiffRegLogic.learning.progress as p; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_line_is_one_json_object_with_the_event_first():
    line = progress_line("progress", step=3, steps=10, loss=0.25, val_mtre_mm=None, stage=(1, 2))
    assert "\n" not in line and line.startswith('{"event": "progress"')
    assert json.loads(line) == {"event": "progress", "step": 3, "steps": 10, "loss": 0.25, "val_mtre_mm": None,
                                "stage": [1, 2]}


def test_non_finite_numbers_become_null_and_odd_values_plain():
    class Scalar:  # a numpy/torch scalar stand-in: float() works
        def __float__(self):
            return 2.5

    record = parse_progress_line(progress_line("validation", a=math.nan, b=math.inf, c=Scalar(), d={"x": -math.inf},
                                               e=True))
    assert record == {"event": "validation", "a": None, "b": None, "c": 2.5, "d": {"x": None}, "e": True}


def test_round_trip_of_every_event():
    for event in EVENTS:
        fields = {"step": 7, "elapsed_s": 1.5, "path": "model.pt"}
        assert parse_progress_line(progress_line(event, **fields)) == {"event": event, **fields}


def test_other_lines_are_not_records():
    for line in ["", "   ", "training:  40%|####      | 4/10 [00:01<00:02,  2.9step/s]",
                 "UserWarning: something", "[1, 2, 3]", '{"step": 3}', '{"event": 3}', "{not json}",
                 '{"event": "progress"', None, 42]:
        assert parse_progress_line(line) is None, line
    # tqdm redraws with carriage returns before the record on the same captured line
    record = parse_progress_line("training: 10%|#  | 1/10\r" + progress_line("done", step=10) + "\r\n")
    assert record == {"event": "done", "step": 10}


def test_human_lines_say_the_numbers():
    text = format_progress({"event": "progress", "step": 5, "steps": 10, "fraction": 0.5, "loss": 1.23456,
                            "val_mtre_mm": 3.21, "elapsed_s": 65, "eta_s": 3725})
    assert text == "50% step 5/10, loss 1.23, val mTRE 3.2 mm, elapsed 1:05, ETA 1:02:05"
    assert format_progress({"event": "progress", "step": 5, "steps": None, "fraction": None, "loss": None,
                            "val_mtre_mm": None, "elapsed_s": 0, "eta_s": None}) == (
        "? step 5, loss ?, val mTRE ?, elapsed 0:00, ETA ?")
    assert format_progress({"event": "start", "steps": None, "minutes": 10, "image_size": 128, "batch_size": 16,
                            "device": "cpu"}) == "Training started: 10 min, 128 px, batch 16 on cpu"
    assert "median mTRE 2.50 mm" in format_progress({"event": "validation", "step": 4, "mtre_mm_median": 2.5})
    assert format_progress({"event": "done", "step": 9, "elapsed_s": 30, "mtre_mm_median": 1.0,
                            "path": "m.pt"}) == "Training done: 9 steps in 0:30, median mTRE 1.00 mm, saved m.pt"
    assert format_progress({"event": "checkpoint", "step": 2, "path": "m.pt"}) == "Checkpoint at step 2: m.pt"
