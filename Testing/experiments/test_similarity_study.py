"""The learned-similarity experiments: capture range, landscapes, convergence, robustness, and their commands.

Independent truths: closed-form curves for `capture_range` (-|x|, cos x, a
triangular bump on -|x|); landscape values recomputed from poses built by
hand (scipy's rotation about the CT centre), a fresh render and numpy's
correlation coefficient, or ``1 - similarity.distance``; start mTREs by hand
from the sampled motions; the convergence curves against a second
registration of the same start with the test's own callback; the summaries
recomputed from the CSV rows. One tiny similarity (2 training steps) is
trained once for the module.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from DiffRegLogic import evaluation, experiments
from DiffRegLogic.cli import main
from DiffRegLogic.devices import set_threads
from DiffRegLogic.drr.rendering import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.common import ExperimentInterrupted
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict, write_json
from DiffRegLogic.geometry.motions import perturb_pose, random_motions
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.similarity_inference import load_similarity
from DiffRegLogic.learning.similarity_net import SimilarityNetConfig
from DiffRegLogic.learning.similarity_trainer import SimilarityTrainConfig, train_similarity
from DiffRegLogic.registration import register
from DiffRegLogic.registration.options import make_options
from DiffRegLogic.volume.phantoms import chest_phantom

DETECTOR = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))
"""A coarse 64 x 64 detector with the demo's 600 mm field (as Testing/cli/test_train.py's)."""
TINY_NET = SimilarityNetConfig(image_size=32, groups=4, channels=(8, 16), dim=32, depth=1)
RANGES = dict(max_rotation_deg=10.0, max_translation_mm=15.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread for this module (the machine is shared: two threads under load are many times slower)."""
    from DiffRegLogic.drr import fused_cpu

    before = torch.get_num_threads(), (fused_cpu.numba.get_num_threads() if fused_cpu.AVAILABLE else None)
    set_threads(1)
    yield
    torch.set_num_threads(before[0])
    if before[1] is not None:
        fused_cpu.set_threads(before[1])


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Phantom, detector, true pose (near the AP view), its DRR as the X-ray, and a 2-step similarity model."""
    folder = tmp_path_factory.mktemp("similarity_case")
    volume = chest_phantom()
    reference = reference_view(volume, DETECTOR, 600.0)
    truth = perturb_pose(reference, torch.tensor([[0.03, -0.02, 0.04, 4.0, -3.0, 2.0]], dtype=torch.float64),
                         volume.center.to(torch.float64))[0]
    with torch.no_grad():
        xray = render(volume, DETECTOR, truth)[0]
    config = SimilarityTrainConfig(steps=2, network=TINY_NET, batch_size=2, pool_pairs=4, stages=1,
                                   validation_pairs=2, validate_every=0, checkpoint_every=0,
                                   target_range=PoseRange(10.0, 15.0), offset_range=PoseRange(20.0, 30.0))
    model = folder / "sim.pt"
    train_similarity(volume, DETECTOR, config, reference_pose=reference, checkpoint_path=model, bar=False)
    return {"volume": volume, "truth": truth, "xray": xray, "model": model, "folder": folder,
            "similarity": load_similarity(model, volume, DETECTOR)}


def _by_hand(volume, truth, motion):
    """truth @ T(c) [R | t] T(-c) for motion (rotation vector rad (3), translation mm (3)), R from scipy."""
    c = volume.center.to(torch.float64).numpy()
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(motion[:3]).as_matrix()
    m[:3, 3] = c - m[:3, :3] @ c + np.asarray(motion[3:])
    return truth @ torch.as_tensor(m)


def _mtre_by_hand(volume, motion, n_points):
    """mTRE of a motion about the CT centre: mean |R (p - c) + t - (p - c)| over the target points."""
    points = evaluation.target_points(volume, n_points).numpy()
    rel = points - volume.center.numpy()
    return float(np.linalg.norm(rel @ Rotation.from_rotvec(motion[:3]).as_matrix().T + motion[3:] - rel,
                                axis=1).mean())


# --------------------------------------------------------------------------- capture_range


def test_capture_range_on_closed_form_curves():
    x = np.linspace(-3.0, 3.0, 61)
    assert experiments.capture_range(x, -np.abs(x)) == (3.0, 3.0)
    t = np.linspace(-2 * np.pi, 2 * np.pi, 401)
    a, b = experiments.capture_range(t, np.cos(t))
    assert a == pytest.approx(np.pi, abs=1e-12) and b == pytest.approx(np.pi, abs=1e-12)
    # a triangular bump of height 1, half-width 0.25 at +1 rises from its foot at 0.75
    fine = np.linspace(-3.0, 3.0, 121)  # 0.05 apart: the foot is a sample
    bump = -np.abs(fine) + np.maximum(0.0, 1.0 - np.abs(fine - 1.0) / 0.25)
    a, b = experiments.capture_range(fine, bump)
    assert a == 3.0 and b == pytest.approx(0.75, abs=1e-12)
    # the maximum is not at 0: no capture range; a plateau is not an increase
    assert experiments.capture_range(x, -(x - 0.5) ** 2) == (0.0, 0.0)
    assert experiments.capture_range(x, np.ones_like(x)) == (3.0, 3.0)
    # a NaN ends its side; offsets that need not be symmetric
    with_nan = -np.abs(x)
    with_nan[50] = np.nan  # x = 2.0
    assert experiments.capture_range(x, with_nan) == pytest.approx((3.0, 1.9))
    assert experiments.capture_range([-1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 0.5, 0.7]) == (1.0, 2.0)


def test_capture_range_tolerance_is_relative_and_bad_input_is_refused():
    x = np.linspace(-1.0, 1.0, 21)
    noisy = 1.0 + 1e-12 * np.random.default_rng(0).standard_normal(x.size)
    noisy[10] = noisy.max()  # 0 stays a local maximum
    assert experiments.capture_range(x, noisy) == (1.0, 1.0)
    a, b = experiments.capture_range(x, noisy, rtol=0.0)
    assert a < 1.0 or b < 1.0
    for offsets, values in (([-1.0, 1.0], [0.0, 0.0]), ([0.0, -1.0], [1.0, 0.0]), ([-1.0, 0.0], [1.0]),
                            ([[0.0]], [[1.0]])):
        with pytest.raises(InputError):
            experiments.capture_range(offsets, values)
    with pytest.raises(InputError, match="rtol"):
        experiments.capture_range([0.0], [1.0], rtol=-1.0)


# --------------------------------------------------------------------------- landscapes


@pytest.fixture(scope="module")
def landscape_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("similarity_landscape")
    return experiments.similarity_landscapes(case["volume"], case["xray"], DETECTOR, case["truth"], out,
                                             measures={"so4": case["similarity"], "zncc": "zncc"}, n_points=5,
                                             rotation_range_deg=20.0, translation_range_mm=30.0)


def test_landscape_values_equal_a_fresh_render_with_zncc_and_the_learned_distance(case, landscape_run):
    rows = _read_csv(landscape_run["landscape"]["csv"])
    value = {(r["similarity"], r["axis"], float(r["offset"])): float(r["value"]) for r in rows}
    xray = case["xray"]
    for axis, offset, motion in (("rx", 10.0, [math.radians(10.0), 0, 0, 0, 0, 0]),
                                 ("ty", -15.0, [0, 0, 0, 0, -15.0, 0])):
        pose = _by_hand(case["volume"], case["truth"], np.array(motion, dtype=np.float64))
        with torch.no_grad():
            drr = render(case["volume"], DETECTOR, pose)
        expected = np.corrcoef(drr[0].double().numpy().ravel(), xray.double().numpy().ravel())[0, 1]
        assert value[("zncc", axis, offset)] == pytest.approx(expected, abs=2e-6)
        learned = 1.0 - float(case["similarity"].distance(drr, xray)[0])
        assert value[("so4", axis, offset)] == pytest.approx(learned, abs=2e-6)


def test_capture_ranges_and_axis_counts_follow_from_the_written_curves(landscape_run):
    rows = _read_csv(landscape_run["landscape"]["csv"])
    capture = {(r["measure"], r["axis"]): r for r in _read_csv(landscape_run["csv"])}
    assert len(capture) == 12
    widths = {}
    for (measure, axis), row in capture.items():
        curve = sorted((float(r["offset"]), float(r["value"])) for r in rows
                       if r["similarity"] == measure and r["axis"] == axis)
        a, b = experiments.capture_range([o for o, _ in curve], [v for _, v in curve])
        assert (float(row["a"]), float(row["b"])) == pytest.approx((a, b), abs=1e-6)
        assert float(row["width"]) == pytest.approx(a + b, abs=1e-6)
        assert row["kind"] == ("learned" if measure == "so4" else "image")
        widths[measure, axis] = a + b
    wider = sum(widths["so4", axis] > widths["zncc", axis] for axis in experiments.AXES)
    ties = sum(widths["so4", axis] == widths["zncc", axis] for axis in experiments.AXES)
    assert landscape_run["wider_axes"] == {"so4": {"zncc": wider}}
    assert landscape_run["most_axes"] == {"so4": {"zncc": wider > 3}}
    md = landscape_run["markdown"].read_text()
    assert f"so4 vs zncc: wider on {wider} of 6 axes, equal on {ties}" in md
    assert "| measure | rx | ry | rz | tx | ty | tz |" in md
    with Image.open(landscape_run["png"]) as image:
        assert image.size == (2 * experiments.PLOT_SIZE[0], 3 * experiments.PLOT_SIZE[1])


def test_landscape_takes_callables_in_their_dtype_and_refuses_a_wrong_output(case, tmp_path):
    from DiffRegLogic.similarity.ncc import zncc

    seen = []

    def measure(drr, xray, mask=None):
        seen.append((drr.dtype, xray.dtype))
        return zncc(drr, xray)

    measure.dtype = torch.float64
    args = (case["volume"], case["xray"], DETECTOR, case["truth"])
    report = experiments.landscape(*args, tmp_path / "a", similarities={"mine": measure, "zncc": "zncc"},
                                   n_points=3, level=4.0)
    assert seen and set(seen) == {(torch.float64, torch.float64)}
    for axis in experiments.AXES:  # the same measure, in float64 and in the DRR's float32
        np.testing.assert_allclose(report["values"]["mine"][axis], report["values"]["zncc"][axis], atol=1e-5)
    with pytest.raises(InputError, match="one value per DRR"):
        experiments.landscape(*args, tmp_path / "b", similarities={"bad": lambda d, x, m=None: d.mean()},
                              n_points=3, level=4.0)


# --------------------------------------------------------------------------- convergence


@pytest.fixture(scope="module")
def convergence_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("similarity_convergence")
    return experiments.similarity_convergence(case["volume"], case["xray"], DETECTOR, case["truth"],
                                              case["similarity"], out, optimizers=("adam", "lm"), n=2, **RANGES,
                                              levels=(4.0,), iterations=3, basin_mm=20.0, log=None)


def test_convergence_curves_start_at_the_start_mtre_and_are_what_a_callback_sees(case, convergence_run):
    rows = _read_csv(convergence_run["csv"])
    motions = random_motions(2, RANGES["max_rotation_deg"], RANGES["max_translation_mm"], 0).numpy()
    for name in ("adam", "lm"):
        for start in (0, 1):
            curve = [r for r in rows if r["optimizer"] == name and int(r["start"]) == start]
            assert [int(r["iteration"]) for r in curve] == list(range(len(curve))) and len(curve) >= 2
            expected = _mtre_by_hand(case["volume"], motions[start], experiments.CONVERGENCE_POINTS)
            assert float(curve[0]["mtre_mm"]) == pytest.approx(expected, abs=1e-4)
            assert float(curve[0]["seconds"]) == 0.0
            assert all(float(a["seconds"]) <= float(b["seconds"]) for a, b in zip(curve, curve[1:]))
    # the same start registered again with this test's own callback: the same best poses, iteration by iteration
    points = evaluation.target_points(case["volume"], experiments.CONVERGENCE_POINTS).double().numpy()
    truth = case["truth"].numpy()

    def mtre(pose):
        pose = pose.numpy()
        moved = (points @ pose[:3, :3].T + pose[:3, 3]) - (points @ truth[:3, :3].T + truth[:3, 3])
        return float(np.linalg.norm(moved, axis=1).mean())

    for name, start in (("adam", 1), ("lm", 0)):
        seen = []
        register(case["volume"], case["xray"], DETECTOR, _by_hand(case["volume"], case["truth"], motions[start]),
                 make_options(optimizer=name, similarity=case["similarity"], levels=(4.0,), max_iterations=3),
                 callback=lambda progress: seen.append(progress.pose))
        curve = [float(r["mtre_mm"]) for r in rows if r["optimizer"] == name and int(r["start"]) == start]
        assert max(curve) - min(curve) > 0.1  # the best pose moved: the comparison can tell poses apart
        np.testing.assert_allclose(curve[1:], [mtre(p) for p in seen], atol=1e-3)


def test_convergence_summary_follows_from_the_csv(convergence_run):
    rows = _read_csv(convergence_run["csv"])
    starts = _read_csv(convergence_run["starts_csv"])
    for name in ("adam", "lm"):
        basins = []
        for start in (0, 1):
            curve = [r for r in rows if r["optimizer"] == name and int(r["start"]) == start]
            reached = [int(r["iteration"]) for r in curve if float(r["mtre_mm"]) < 20.0]
            basins.append(reached[0] if reached else math.inf)
            row = next(r for r in starts if r["optimizer"] == name and int(r["start"]) == start)
            assert float(row["basin_iteration"]) == basins[-1]
        s = convergence_run["summary"][name]
        assert s["median_basin_iteration"] == float(np.median(basins))
        assert s["basin_rate"] == np.mean(np.isfinite(basins))
        finals = [float(r["final_mtre_mm"]) for r in starts if r["optimizer"] == name]
        assert s["median_final_mtre_mm"] == pytest.approx(statistics.median(finals), abs=1e-3)
    md = convergence_run["markdown"].read_text()
    assert "| adam | 2 |" in md and "| lm | 2 |" in md and "mTRE < 20 mm" in md
    with Image.open(convergence_run["png"]) as image:
        assert image.size == (experiments.PLOT_SIZE[0], 2 * experiments.PLOT_SIZE[1])


# --------------------------------------------------------------------------- robustness


@pytest.fixture(scope="module")
def robustness_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("similarity_robustness")
    sim = case["similarity"]
    variants = {"zncc": {"similarity": "zncc"}, "so4": {"similarity": sim, "polish": None},
                "so4+zncc": {"similarity": sim, "polish": "zncc"}}
    return experiments.similarity_robustness(case["volume"], case["xray"], DETECTOR, case["truth"], out,
                                             variants=variants, n=3, **RANGES, success_mm=8.0,
                                             options=dict(levels=(4.0,), max_iterations=3), log=None)


def test_robustness_uses_the_same_starts_and_its_summary_follows_from_the_rows(case, robustness_run):
    rows = _read_csv(robustness_run["csv"])
    assert [r["variant"] for r in rows] == ["zncc"] * 3 + ["so4"] * 3 + ["so4+zncc"] * 3
    motions = random_motions(3, RANGES["max_rotation_deg"], RANGES["max_translation_mm"], 0).numpy()
    expected = [_mtre_by_hand(case["volume"], m, experiments.N_TARGET_POINTS) for m in motions]
    for name in ("zncc", "so4", "so4+zncc"):
        mine = [r for r in rows if r["variant"] == name]
        np.testing.assert_allclose([float(r["start_mtre_mm"]) for r in mine], expected, atol=1e-3)
        final = [float(r["final_mtre_mm"]) for r in mine]
        s = robustness_run["summary"][name]
        assert s["n"] == 3 and s["success_rate"] == sum(f < 8.0 for f in final) / 3
        assert s["median_final_mtre_mm"] == pytest.approx(statistics.median(final), abs=1e-3)
        assert s["median_seconds"] == pytest.approx(statistics.median(float(r["seconds"]) for r in mine), abs=1e-3)
    by = {(r["variant"], int(r["start"])): r for r in rows}
    for i in range(3):
        assert by["zncc", i]["learned_mtre_mm"] == "nan" and by["zncc", i]["stages"] == "zncc"
        assert by["so4", i]["learned_mtre_mm"] == by["so4", i]["final_mtre_mm"] and by["so4", i]["stages"] == "learned"
        # the polish starts where the learned stage alone ends
        assert float(by["so4+zncc", i]["learned_mtre_mm"]) == pytest.approx(float(by["so4", i]["final_mtre_mm"]),
                                                                             abs=1e-3)
        assert by["so4+zncc", i]["stages"] == "learned+zncc"
    md = robustness_run["markdown"].read_text()
    assert "| so4+zncc | learned+zncc | 3 |" in md and "+-10 deg" in md
    with Image.open(robustness_run["png"]) as image:
        assert image.size == (experiments.PLOT_SIZE[0], 2 * experiments.PLOT_SIZE[1])


def test_robustness_keeps_the_finished_rows_on_interrupt(case, tmp_path):
    def interrupting(drr, xray, mask=None):
        raise KeyboardInterrupt

    with pytest.raises(ExperimentInterrupted) as caught:
        experiments.similarity_robustness(case["volume"], case["xray"], DETECTOR, case["truth"], tmp_path / "out",
                                          variants={"zncc": {}, "stop": {"similarity": interrupting}}, n=1,
                                          options=dict(levels=(4.0,), max_iterations=1), log=None)
    rows = _read_csv(caught.value.kept)
    assert caught.value.kept.name == "similarity_robustness.partial.csv"
    assert [r["variant"] for r in rows] == ["zncc"]


def test_bad_input_is_refused_before_any_work(case, tmp_path):
    args = (case["volume"], case["xray"], DETECTOR, case["truth"])
    sim = case["similarity"]
    for measures in ({}, {"x": 3}, ["zncc"], {"x": "nope"}):
        with pytest.raises(InputError):
            experiments.similarity_landscapes(*args, tmp_path, measures=measures)
    for kwargs in (dict(optimizers=("nope",)), dict(optimizers=()), dict(n=0), dict(options={"levels": (2.0,)}),
                   dict(basin_mm=-1.0), dict(levels=(0.5, "x"))):
        with pytest.raises(InputError):
            experiments.similarity_convergence(*args, sim, tmp_path, **kwargs, log=None)
    for variants in ({}, {"a": {"similarity": "zncc", "polish": "zncc"}}, {"a": {"similarity": sim, "polish": "nope"}},
                     {"a": {"no_such_option": 1}}, {"a": {"similarity": sim, "optimizer": "lm", "polish": "mi"}},
                     {"a": 3}):
        with pytest.raises(InputError):
            experiments.similarity_robustness(*args, tmp_path, variants=variants, n=1, log=None)
    with pytest.raises(InputError):
        experiments.similarity_robustness(*args, tmp_path, variants={"a": {}}, success_mm=0.0, log=None)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def files(case):
    folder = case["folder"]
    write_json(folder / "geometry.json", detector_to_dict(DETECTOR))
    write_json(folder / "truth.json", pose_to_dict(case["truth"]))
    return ["--geometry", str(folder / "geometry.json"), "--truth", str(folder / "truth.json"), "--device", "cpu",
            "--threads", "1"]


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue() + err.getvalue()


def test_the_three_commands_write_their_reports(case, files, tmp_path):
    model = f"so4={case['model']}"
    status, text = _main(["experiment", "similarity-landscape", "--out", str(tmp_path / "l"), *files,
                          "--similarity-models", model, "--points", "3", "--max-rot", "10", "--max-trans", "10"])
    assert status == 0, text
    assert {(r["measure"], r["kind"]) for r in _read_csv(tmp_path / "l" / "capture_range.csv")} == {
        ("so4", "learned"), ("zncc", "image")}
    status, text = _main(["experiment", "similarity-convergence", "--out", str(tmp_path / "c"), *files,
                          "--similarity-models", model, "--optimizers", "adam", "--n", "1", "--iterations", "2"])
    assert status == 0, text
    assert {r["optimizer"] for r in _read_csv(tmp_path / "c" / "similarity_convergence.csv")} == {"adam"}
    md = (tmp_path / "c" / "similarity_convergence.md").read_text()
    assert "+-20 deg" in md and "+-30 mm" in md and "levels 4," in md  # the experiment's defaults
    status, text = _main(["experiment", "similarity-robustness", "--out", str(tmp_path / "r"), *files,
                          "--similarity-models", model, "--n", "1", "--levels", "4", "--iterations", "2"])
    assert status == 0, text
    rows = _read_csv(tmp_path / "r" / "similarity_robustness.csv")
    assert [r["variant"] for r in rows] == ["zncc", "so4", "so4+zncc"]
    assert len({r["start_mtre_mm"] for r in rows}) == 1
    assert "+-45 deg" in (tmp_path / "r" / "similarity_robustness.md").read_text()


@pytest.mark.parametrize("kind, extra, message", [
    ("similarity-landscape", ["--similarity-models", "so4=missing.pt"], "does not exist"),
    ("similarity-landscape", ["--similarity-models", "so4"], "NAME=PATH"),
    ("similarity-landscape", ["--similarity-models", "=sim.pt"], "NAME=PATH"),
    ("similarity-robustness", ["--similarity-models", "a=MODEL", "a=MODEL"], "twice"),
    ("similarity-convergence", ["--similarity-models", "a=MODEL", "b=MODEL"], "exactly one"),
    ("similarity-convergence", [], "exactly one"),
    ("similarity-landscape", ["--similarity-models", "zncc=MODEL"], "rename"),
    ("similarity-landscape", ["--similarity-models", "a=MODEL", "--polish", "mi"], "--polish"),
    ("similarity-convergence", ["--similarity-models", "a=MODEL", "--optimizers", "nope"], "nope"),
    ("robustness", ["--similarity-models", "a=MODEL"], "--similarity-models is for"),
])
def test_bad_command_lines_exit_2_and_write_nothing(case, files, tmp_path, kind, extra, message):
    out = tmp_path / "out"
    extra = [e.replace("MODEL", str(case["model"])) for e in extra]
    status, text = _main(["experiment", kind, "--out", str(out), *files, *extra])
    assert status == 2 and message in text, text
    assert not out.exists()


def test_the_learned_similarity_arguments_are_checked_without_heavy_imports(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys
from DiffRegLogic.cli import build_parser, main
model = {str(tmp_path / 'sim.pt')!r}
open(model, "wb").close()
args = build_parser().parse_args(["experiment", "similarity-robustness", "--out", {str(tmp_path / 'o')!r},
                                  "--similarity-models", "so4=" + model, "--polish", "none"])
assert args.check(args).declared
assert main(["experiment", "similarity-convergence", "--out", "o", "--similarity-models", "a=missing.pt"]) == 2
heavy = [m for m in ("torch", "numba", "numpy") if m in sys.modules]
assert not heavy, heavy
"""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
