"""SIGINT and SIGTERM during long commands: one `error: interrupted` line, the signal's exit status, no partial outputs.

Each test runs the real console entry (``python -m DiffRegLogic.cli``) in a
subprocess, waits for its first progress line, sends the signal and checks
what is left in the folder.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from DiffRegLogic.experiments.demo import demo_detector, demo_poses
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict, write_json
from DiffRegLogic.drr.rendering import render
from DiffRegLogic.volume.phantoms import chest_phantom
from DiffRegLogic.xray.files import write_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 64 x 64 X-ray of the phantom at the demo's target pose, its geometry and the demo's start pose."""
    folder = tmp_path_factory.mktemp("interrupt_inputs")
    volume = chest_phantom()
    detector = demo_detector().downsample(200 / 64)
    target, start = demo_poses(volume.center.to(torch.float64))
    with torch.no_grad():
        xray = render(volume, detector, target)[0]
    write_image(folder / "x.npy", xray)
    write_json(folder / "g.json", detector_to_dict(detector))
    write_json(folder / "start.json", pose_to_dict(start))
    write_json(folder / "truth.json", pose_to_dict(target))
    return folder


def _interrupt(args: list[str], cwd: Path, ready: str, signum: int, timeout: float = 120.0):
    """Run ``diffreg *args`` in ``cwd``; send ``signum`` once a stdout line contains ``ready``; (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))  # this checkout, not an installed copy
    process = subprocess.Popen([sys.executable, "-m", "DiffRegLogic.cli", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            if ready in line:
                time.sleep(0.3)  # inside the work, not at its first line
                process.send_signal(signum)
                break
            assert time.monotonic() < deadline, "no progress line in time"
        else:
            pytest.fail(f"the command ended before {ready!r}: {''.join(lines)} {process.stderr.read()}")
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(lines) + out, err


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_register_interrupted_leaves_no_output(tmp_path, case, signum, status):
    before = {p.name: p.read_bytes() for p in case.iterdir()}
    rc, out, err = _interrupt(["register", "--ct", "phantom", "--xray", str(case / "x.npy"), "--geometry",
                               str(case / "g.json"), "--init", str(case / "start.json"), "--truth",
                               str(case / "truth.json"), "--out", "r.json", "--drr", "drr.nrrd", "--overlay", "o.png",
                               "--levels", "2", "1", "--n-starts", "16", "--iterations", "2000"],
                              tmp_path, "level 1/", signum)
    assert rc == status, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"error: interrupted ({signal.Signals(signum).name}) during 'diffreg register'; "
                        "no output was written")
    assert list(tmp_path.iterdir()) == []  # no result, no DRR, no overlay, no temporary file
    assert {p.name: p.read_bytes() for p in case.iterdir()} == before


def test_experiment_interrupted_keeps_the_finished_rows(tmp_path, case):
    rc, out, err = _interrupt(["experiment", "robustness", "--out", "exp", "--geometry", str(case / "g.json"),
                               "--truth", str(case / "truth.json"), "--n", "40", "--batch", "2", "--levels", "2",
                               "--iterations", "40", "--optimizers", "adam", "--max-rot", "5", "--max-trans", "5"],
                              tmp_path, "adam: 2/40 starts", signal.SIGTERM)
    assert rc == 143, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = tmp_path / "exp" / "robustness.partial.csv"
    assert lines[0] == (f"error: interrupted (SIGTERM) during 'diffreg experiment'; the rows finished so far are "
                        f"in {Path('exp') / 'robustness.partial.csv'}")
    rows = list(csv.DictReader(kept.open()))
    assert 2 <= len(rows) < 40 and [int(r["start"]) for r in rows] == list(range(len(rows)))
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["robustness.partial.csv"]


def test_train_interrupted_keeps_its_checkpoint(tmp_path, case):
    flags = ["--ct", "phantom", "--geometry", str(case / "g.json"), "--out", "m.pt", "--steps", "100000",
             "--image-size", "32", "--backbone", "small", "--pool-images", "16", "--batch-size", "4", "--max-rot",
             "10", "--max-trans", "10", "--progress", "json"]
    rc, out, err = _interrupt(["train", *flags], tmp_path, '"event": "progress"', signal.SIGTERM)
    assert rc == 143, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == ("error: interrupted (SIGTERM) during 'diffreg train'; the last checkpoint is kept in m.pt "
                        "(continue it with --resume)")
    from DiffRegLogic.learning.checkpoint import load_pose_network

    _, info = load_pose_network(tmp_path / "m.pt", chest_phantom())
    assert info.step >= 10 and not info.complete  # at least the step of the first progress line (every 10 steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file beside it
