"""The experiments (similarity landscape, robustness to the start) on a small phantom case.

Truth: the X-ray is a DRR rendered at the true pose, so the similarity is 1
there and lower elsewhere; a landscape value off the truth is recomputed from
a pose built by hand (rotation about the CT centre) and numpy's correlation
coefficient; the start errors follow from the sampled motions (rotation =
|rotation vector|, translation at the CT centre = |translation|, mTRE by
hand with scipy's rotation); the
summaries are recomputed from the CSV.
"""

from __future__ import annotations

import csv
import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from DiffRegLogic import evaluation, experiments
from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector, axis_rotation, make_rigid
from DiffRegLogic.volume.phantoms import chest_phantom
from DiffRegLogic.registration import random_motions

N_POINTS = 11
SMALL = dict(n=4, max_rotation_deg=5.0, max_translation_mm=10.0, optimizers=("adam",))


@pytest.fixture(scope="module")
def case():
    volume = chest_phantom().downsample(4)
    detector = Detector(**DEMO_DETECTOR).downsample(8)
    target, _ = demo_poses(volume.center.to(torch.float64))
    xray = render(volume, detector, target)[0]
    return dict(volume=volume, detector=detector, target=target, xray=xray)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def landscape_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape") / "new" / "dir"
    result = experiments.landscape(case["volume"], case["xray"], case["detector"], case["target"], out,
                                   similarities=("zncc", "gradient_ncc"), n_points=N_POINTS)
    return result


def test_landscape_peaks_at_the_true_pose_with_value_one(landscape_run):
    for name in ("zncc", "gradient_ncc"):
        assert landscape_run["argmax"][name] == {axis: 0.0 for axis in experiments.AXES}
    rows = _read_csv(landscape_run["csv"])
    zncc = [r for r in rows if r["similarity"] == "zncc"]
    assert len(zncc) == 6 * N_POINTS
    assert len([r for r in rows if r["similarity"] == "gradient_ncc"]) == 6 * N_POINTS
    for axis in experiments.AXES:
        values = {float(r["offset"]): float(r["value"]) for r in zncc if r["axis"] == axis}
        assert len(values) == N_POINTS
        assert min(values) == -(30.0 if axis[0] == "r" else 60.0) and max(values) == -min(values)
        assert values[0.0] == pytest.approx(1.0, abs=1e-6)
        assert max(values, key=values.get) == 0.0
        assert all(v < 1.0 - 1e-4 for o, v in values.items() if o != 0.0)
    assert landscape_run["value_at_zero"]["zncc"] == pytest.approx(1.0, abs=1e-6)


def test_landscape_value_off_the_truth_matches_a_hand_built_pose(case, landscape_run):
    # rz = +12 deg: the CT rotated by 12 deg about the world z axis through its centre
    c = case["volume"].center.to(torch.float64)
    rot = axis_rotation("Z", torch.tensor(math.radians(12.0), dtype=torch.float64))
    world_motion = make_rigid(rot, c - rot @ c)
    drr = render(case["volume"], case["detector"], case["target"] @ world_motion)[0]
    expected = np.corrcoef(drr.double().numpy().ravel(), case["xray"].double().numpy().ravel())[0, 1]
    rows = _read_csv(landscape_run["csv"])
    value = [float(r["value"]) for r in rows if r["similarity"] == "zncc" and r["axis"] == "rz"
             and float(r["offset"]) == 12.0]
    assert value == [pytest.approx(expected, abs=1e-5)]
    assert expected < 0.999


def test_landscape_markdown_and_png(landscape_run):
    md = landscape_run["markdown"].read_text()
    for name in ("zncc", "gradient_ncc"):
        lines = [line for line in md.splitlines() if line.startswith(f"| {name} |")]
        assert [line.split("|")[2].strip() for line in lines] == list(experiments.AXES)
        assert all("| yes |" in line for line in lines)
    with Image.open(landscape_run["png"]) as image:
        width, height = experiments.PLOT_SIZE
        assert image.size == (width, 2 * 2 * height)
        assert np.asarray(image).std() > 10  # something was drawn


@pytest.fixture(scope="module")
def robustness_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    lines = []
    result = experiments.robustness(case["volume"], case["xray"], case["detector"], case["target"], out,
                                    **SMALL, success_mm=(2.0, 20.0), options=dict(levels=(2.0,), max_iterations=40),
                                    batch=2, log=lines.append)
    return result, lines


def test_robustness_csv_and_summary_agree(robustness_run):
    result, lines = robustness_run
    rows = _read_csv(result["csv"])
    assert len(rows) == 4 and [r["optimizer"] for r in rows] == ["adam"] * 4
    assert [int(r["start"]) for r in rows] == [0, 1, 2, 3]
    final = [float(r["final_mtre_mm"]) for r in rows]
    summary = result["summary"]["adam"]
    assert summary["n"] == 4
    for t in (2.0, 20.0):
        assert summary["success_rate"][f"{t:g}"] == sum(f < t for f in final) / 4
    assert summary["median_final_mtre_mm"] == pytest.approx(statistics.median(final), abs=1e-3)
    assert summary["median_seconds"] == pytest.approx(statistics.median(float(r["seconds"]) for r in rows), abs=1e-3)
    converged = [r["converged"] == "True" for r in rows]
    assert summary["converged_rate"] == sum(converged) / 4
    assert summary["false_convergence_rate"] == sum(c and f >= 2.0 for c, f in zip(converged, final)) / 4
    assert all(int(r["iterations"]) <= 40 for r in rows)
    assert all(-1.0 <= float(r["final_similarity"]) <= 1.0 + 1e-6 for r in rows)
    # one progress line per chunk of 2 starts
    assert len(lines) == 2 and lines[-1].startswith("adam: 4/4")


def test_robustness_start_errors_follow_from_the_sampled_motions(case, robustness_run):
    result, _ = robustness_run
    rows = _read_csv(result["csv"])
    motions = random_motions(4, 5.0, 10.0, 0)
    np.testing.assert_allclose([float(r["start_rotation_deg"]) for r in rows],
                               np.degrees(motions[:, :3].norm(dim=1).numpy()), atol=1e-3)
    np.testing.assert_allclose([float(r["start_translation_mm"]) for r in rows],
                               motions[:, 3:].norm(dim=1).numpy(), atol=1e-3)
    # mTRE by hand: a motion (omega, t) about the centre c moves p by R(omega)(p - c) + t - (p - c)
    points = evaluation.target_points(case["volume"], experiments.N_TARGET_POINTS).numpy()
    rel = points - case["volume"].center.numpy()
    expected = [np.linalg.norm(rel @ Rotation.from_rotvec(m[:3]).as_matrix().T + m[3:] - rel, axis=1).mean()
                for m in motions.numpy()]
    np.testing.assert_allclose([float(r["start_mtre_mm"]) for r in rows], expected, atol=1e-3)


def test_robustness_markdown_and_plots(robustness_run):
    result, _ = robustness_run
    md = result["markdown"].read_text()
    assert "built-in chest phantom" in md and "seed 0" in md and "levels 2" in md and "renderer siddon" in md
    row = [line for line in md.splitlines() if line.startswith("| adam |")]
    assert len(row) == 1
    s = result["summary"]["adam"]
    assert f"| {100 * s['success_rate']['2']:.0f}% |" in row[0]
    for key in ("curves_png", "mtre_png"):
        with Image.open(result[key]) as image:
            assert image.size == experiments.PLOT_SIZE


def test_robustness_starts_depend_only_on_the_seed(case, robustness_run, tmp_path):
    result, _ = robustness_run
    cheap = dict(options=dict(levels=(4.0,), max_iterations=2), log=None)
    args = (case["volume"], case["xray"], case["detector"], case["target"])
    same = experiments.robustness(*args, tmp_path / "a", **SMALL, seed=0, **cheap)
    other = experiments.robustness(*args, tmp_path / "b", **SMALL, seed=1, **cheap)

    def start_mtre(r):
        return [float(row["start_mtre_mm"]) for row in _read_csv(r["csv"])]

    assert start_mtre(same) == start_mtre(result)
    assert all(abs(a - b) > 1e-3 for a, b in zip(start_mtre(other), start_mtre(result)))


def test_bad_input_raises_input_error(case, tmp_path):
    args = (case["volume"], case["xray"], case["detector"], case["target"], tmp_path)
    bad_robustness = [
        dict(n=0), dict(max_rotation_deg=-1.0), dict(max_translation_mm=-5.0), dict(optimizers=("adam", "sgd")),
        dict(optimizers=()), dict(success_mm=(0.0,)), dict(batch=0), dict(options=dict(optimizer="gd")),
        dict(options=dict(no_such_option=1)), dict(options=dict(similarity="nope")),
    ]
    for kwargs in bad_robustness:
        with pytest.raises(InputError):
            experiments.robustness(*args, **kwargs, log=None)
    for kwargs in (dict(similarities=("zncc", "nope")), dict(rotation_range_deg=-1.0), dict(translation_range_mm=-1.0),
                   dict(n_points=0), dict(level=0.5), dict(renderer="nope")):
        with pytest.raises(InputError):
            experiments.landscape(*args, **kwargs)
    with pytest.raises(InputError):
        experiments.landscape(case["volume"], case["xray"][:-1], case["detector"], case["target"], tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the checks
