"""The robustness experiment with the global search (``options["search"] = "wide"``).

Truth: each wide row is recomputed by hand: the start rebuilt from the
sampled motion (`random_motions` / `perturb_pose`), registered alone with
`register` (which runs the search about it), its mTRE computed directly;
the local rows by `register_batch` from the same starts; the summary's
median of candidates from the CSV.
"""

from __future__ import annotations

import csv
import statistics

import pytest
import torch

from DiffRegLogic import evaluation, experiments
from DiffRegLogic.drr import render
from DiffRegLogic.experiments.common import N_TARGET_POINTS
from DiffRegLogic.experiments.demo import demo_detector, demo_poses
from DiffRegLogic.geometry.motions import perturb_pose, random_motions
from DiffRegLogic.registration.engine import register, register_batch
from DiffRegLogic.registration.options import make_options
from DiffRegLogic.volume.phantoms import chest_phantom

N = 2
RANGE = dict(max_rotation_deg=45.0, max_translation_mm=60.0)
REGISTRATION = dict(levels=(4.0,), max_iterations=20)
SEARCH = dict(search="wide", search_candidates=64, search_keep=3)


@pytest.fixture(scope="module")
def case():
    volume = chest_phantom().downsample(4)
    detector = demo_detector().downsample(200 / 64)
    target, _ = demo_poses(volume.center.to(torch.float64))
    xray = render(volume, detector, target)[0]
    return dict(volume=volume, detector=detector, target=target, xray=xray)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(case, tmp_path_factory):
    args = (case["volume"], case["xray"], case["detector"], case["target"])
    wide = experiments.robustness(*args, tmp_path_factory.mktemp("wide"), optimizers=("adam",), n=N, seed=4,
                                  options=dict(REGISTRATION, **SEARCH), log=None, **RANGE)
    local = experiments.robustness(*args, tmp_path_factory.mktemp("local"), optimizers=("adam",), n=N, seed=4,
                                   options=dict(REGISTRATION), log=None, **RANGE)
    return wide, local


def test_wide_rows_are_single_start_registrations_with_the_search(case, runs):
    wide, local = runs
    volume, target = case["volume"], case["target"]
    center = volume.center.to(torch.float64)
    starts = perturb_pose(target, random_motions(N, 45.0, 60.0, 4), center)
    points = evaluation.target_points(volume, N_TARGET_POINTS).to(torch.float64)
    opts = make_options(**REGISTRATION, **SEARCH)
    rows = _rows(wide["csv"])
    assert [int(r["candidates"]) for r in rows] == [64] * N
    for i, row in enumerate(rows):
        result = register(volume, case["xray"], case["detector"], starts[i], opts)
        assert result.search["candidates"] == 64
        expected = float(evaluation.mtre(result.pose[None], target, points)[0])
        assert float(row["final_mtre_mm"]) == pytest.approx(expected, abs=1e-3)
        assert float(row["final_similarity"]) == pytest.approx(result.similarity, abs=1e-5)
        assert float(row["start_mtre_mm"]) == pytest.approx(float(evaluation.mtre(starts[i:i + 1], target,
                                                                                  points)[0]), abs=1e-3)
    # the local run: the same starts, no search, the batch as before
    local_rows = _rows(local["csv"])
    assert [int(r["candidates"]) for r in local_rows] == [0] * N
    assert [r["start_mtre_mm"] for r in local_rows] == [r["start_mtre_mm"] for r in rows]
    batch = register_batch(volume, case["xray"], case["detector"], starts, make_options(**REGISTRATION),
                           reference_pose=target)
    local_mtre = evaluation.mtre(torch.stack([r.pose for r in batch]), target, points).tolist()
    assert [float(r["final_mtre_mm"]) for r in local_rows] == pytest.approx(local_mtre, abs=1e-3)


def test_wide_summary_and_markdown_report_the_search(runs):
    wide, local = runs
    rows = _rows(wide["csv"])
    summary = wide["summary"]["adam"]
    assert summary["median_candidates"] == statistics.median(int(r["candidates"]) for r in rows) == 64
    assert local["summary"]["adam"]["median_candidates"] == 0
    md = wide["markdown"].read_text()
    assert "search = wide" in md and "64 candidates" in md and "the best 3 distinct" in md
    header = next(line for line in md.splitlines() if line.startswith("| optimiser"))
    assert header.rstrip(" |").endswith("median candidates")
    assert next(line for line in md.splitlines() if line.startswith("| adam |")).rstrip(" |").endswith("| 64")
    assert "search = wide" not in local["markdown"].read_text()
