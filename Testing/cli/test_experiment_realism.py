"""``diffreg experiment realism``: end to end on a tiny phantom case, its defaults and its argument errors.

Truth: the CSV has one row per preset, variant and start with the start
errors of the seeded motions (recomputed here), and the Markdown's summary
rows are the CSV's medians; the X-ray registered is the preset's
simulation converted as `as_line_integral` says (NCC at truth recomputed).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.cli import build_parser, main
from DiffRegLogic.cli.experiment import CONVENTION_MODES, n_starts, start_range
from DiffRegLogic.experiments import REALISM_VARIANTS, realism_study
from DiffRegLogic.physics import REALISM_PRESETS
from DiffRegLogic.registration import perturb_pose, random_motions
from DiffRegLogic.volume.phantoms import chest_phantom

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--ct", "phantom", "--detector-pixels", "40", "--n", "2", "--levels", "2", "--iterations", "25",
        "--device", "cpu", "--seed", "1"]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_realism_end_to_end_writes_the_declared_files(tmp_path, capsys):
    out = tmp_path / "realism"
    assert main(["experiment", "realism", "--out", str(out), "--presets", "clean", "truncation",
                 "--variants", "zncc"] + TINY) == 0
    assert sorted(p.name for p in out.iterdir()) == ["realism.csv", "realism.md", "realism.png"]
    rows = _rows(out / "realism.csv")
    assert [(r["preset"], r["start"]) for r in rows] == [("clean", "0"), ("clean", "1"), ("truncation", "0"),
                                                         ("truncation", "1")]
    volume = chest_phantom()
    from DiffRegLogic.experiments.demo import demo_poses

    truth, _ = demo_poses(volume.center.to(torch.float64))
    starts = perturb_pose(truth, random_motions(2, 10.0, 20.0, 1), volume.center.to(torch.float64))
    points = evaluation.target_points(volume, 1000).to(torch.float64)
    expected = evaluation.mtre(starts, truth, points).tolist()
    assert [float(r["start_mtre_mm"]) for r in rows[:2]] == pytest.approx(expected, abs=1e-3)
    md = (out / "realism.md").read_text()
    for preset in ("clean", "truncation"):
        final = [float(r["final_mtre_mm"]) for r in rows if r["preset"] == preset]
        rate = 100 * np.mean(np.array(final) < 2.0)
        assert f"| {preset} | zncc | 2 | {rate:.0f}% | {np.median(final):.2f} |" in md
    assert "| truncation | line_integral | line_integral | 0.0% | 58x112x128 |" in md  # 60 % of 96 slices
    assert "+-10 deg, translations in +-20 mm" in md
    assert "wrote" in capsys.readouterr().out


def test_defaults_come_from_the_tables_and_leave_the_namespace_as_given():
    args = build_parser().parse_args(["experiment", "realism", "--out", "o"])
    given = dict(vars(args))
    assert args.presets == list(REALISM_PRESETS) and args.variants == ["zncc"]
    assert n_starts(args) == 10 and start_range(args) == (10.0, 20.0)
    assert vars(args) == given
    assert n_starts(build_parser().parse_args(["experiment", "robustness", "--out", "o"])) == 100
    assert CONVENTION_MODES == realism_study.CONVENTION_MODES
    assert set(REALISM_VARIANTS) >= {"zncc", "robust", "scatter", "wide"}


@pytest.mark.parametrize("extra, message", [
    (["--presets", "fog"], "unknown preset 'fog'"),
    (["--variants", "best"], "unknown variant 'best'"),
    (["--presets", "clean", "clean"], "twice"),
    (["--xray", "x.npy"], "drop --xray"),
    (["--renderer", "polychromatic"], "monochromatic"),
    (["--scatter-fraction", "0.2"], "drop --scatter-fraction"),
    (["--noise-photons", "1000"], "drop --noise-photons"),
    (["--detector-pixels", "2"], "--detector-pixels"),
    (["--detector-pixels", "400"], "only resamples to fewer"),
    (["--n", "0"], "--n"),
])
def test_bad_realism_arguments_exit_2_with_one_line_and_no_output(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["experiment", "realism", "--out", str(out), "--device", "cpu"] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_detector_pixels_is_only_for_realism(tmp_path, capsys):
    assert main(["experiment", "robustness", "--out", str(tmp_path / "o"), "--detector-pixels", "40"]) == 2
    assert "--detector-pixels is for the realism experiment" in capsys.readouterr().err


def test_realism_arguments_are_checked_without_heavy_imports(tmp_path):
    code = f"""
import sys
from DiffRegLogic.cli import build_parser, main
args = build_parser().parse_args(["experiment", "realism", "--out", {str(tmp_path / 'o')!r}, "--presets", "noise"])
args.check(args)
assert main(["experiment", "realism", "--out", "o", "--variants", "best"]) == 2
heavy = [m for m in ("torch", "numba", "numpy") if m in sys.modules]
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
