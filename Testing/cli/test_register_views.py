"""``diffreg register`` with several X-rays: both poses written, the views' relation kept, bad input refused.

Truths: the known poses the X-rays were rendered at (mTRE, and each view's
pose = its relation times view 1's); which files exist after a refused run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, render
from DiffRegLogic.cli import main
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict
from DiffRegLogic.geometry.motions import orbit_pose, perturb_pose

PX = 40
FAST = ["--levels", "2", "1", "--iterations", "30", "--device", "cpu", "--quiet"]


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def two_views(tmp_path_factory):
    """Two X-rays of the phantom 60 deg apart (.npy DRRs), their geometries, starts (one motion) and the truth."""
    from DiffRegLogic.experiments.demo import demo_poses
    from DiffRegLogic.volume.phantoms import chest_phantom

    folder = tmp_path_factory.mktemp("views")
    volume = chest_phantom()
    center = volume.center.to(torch.float64)
    target, _ = demo_poses(center)
    second = orbit_pose(target, center, 60.0)
    detectors = [Detector(rows=PX, cols=PX, sdd=1020.0, pixel_spacing=(600.0 / PX, 600.0 / PX)),
                 Detector(rows=PX + 8, cols=PX, sdd=1100.0, pixel_spacing=(560.0 / PX, 600.0 / PX))]
    motion = torch.tensor([[0.06, -0.05, 0.08, 8.0, -6.0, 12.0]], dtype=torch.float64)
    for k, (pose, detector) in enumerate(zip((target, second), detectors), 1):
        np.save(folder / f"xray{k}.npy", render(volume, detector, pose)[0].numpy())
        _write_json(folder / f"geometry{k}.json", detector_to_dict(detector))
        # the same motion of the CT in both views: each start is its view's truth times that motion
        _write_json(folder / f"start{k}.json", pose_to_dict(perturb_pose(pose, motion, center)[0]))
    _write_json(folder / "truth.json", pose_to_dict(target))
    return dict(folder=folder, target=target, second=second)


def _argv(f, out, *extra, xrays=(1, 2), geometries=(1, 2), inits=(1, 2)):
    argv = ["register", "--ct", "phantom", "--out", str(out)]
    argv += [a for k in xrays for a in ("--xray", str(f / f"xray{k}.npy"))]
    argv += [a for k in geometries for a in ("--geometry", str(f / f"geometry{k}.json"))]
    argv += [a for k in inits for a in ("--init", str(f / f"start{k}.json"))]
    return argv + [*FAST, *extra]


def test_two_xrays_write_both_poses_and_recover_the_pose(two_views, tmp_path):
    f = two_views["folder"]
    out = tmp_path / "result.json"
    assert main(_argv(f, out, "--truth", str(f / "truth.json"), "--drr", str(tmp_path / "drr.npy"))) == 0
    result = json.loads(out.read_text())
    views = result["views"]
    assert [v["xray"] for v in views] == [str(f / "xray1.npy"), str(f / "xray2.npy")]
    assert views[1]["geometry"]["rows"] == PX + 8 and views[1]["geometry"]["source_to_detector_mm"] == 1100.0
    pose1, pose2 = (torch.tensor(v["camera_from_world"], dtype=torch.float64) for v in views)
    torch.testing.assert_close(pose1, torch.tensor(result["camera_from_world"], dtype=torch.float64))
    relation = two_views["second"] @ torch.linalg.inv(two_views["target"])
    torch.testing.assert_close(pose2, relation @ pose1, rtol=0, atol=1e-6)
    view_poses = torch.tensor(result["view_poses"], dtype=torch.float64)
    torch.testing.assert_close(view_poses, torch.stack([pose1, pose2]), rtol=0, atol=0)
    assert result["error_initial"]["mtre_mm"] > 10.0 and result["error"]["mtre_mm"] < 1.0
    for v in views:
        assert v["error"]["mtre_mm"] == pytest.approx(result["error"]["mtre_mm"], abs=1e-6)  # one rigid motion
        assert v["image_metrics"]["ncc"] > 0.99 > v["image_metrics_initial"]["ncc"]
    assert result["similarity"] == pytest.approx(np.mean(result["view_similarities"]), abs=1e-9)
    assert np.load(tmp_path / "drr.npy").shape == (PX, PX)  # --drr is view 1's


@pytest.mark.parametrize("problem, expect", [
    ("one geometry", "2 X-ray(s) (--xray) but 1 --geometry"),
    ("one init", "2 X-ray(s) (--xray) but 1 --init"),
    ("three crops", "2 X-ray(s) (--xray) but 3 --crop"),
    ("constant view 2", "flat.npy is a constant image"),
    ("off the CT", "the CT's footprint covers none of X-ray 2"),
])
def test_bad_views_exit_2_and_write_nothing(two_views, tmp_path, capsys, problem, expect):
    f = two_views["folder"]
    out = tmp_path / "result.json"
    kwargs, extra = {}, []
    if problem == "one geometry":
        kwargs["geometries"] = (1,)
    elif problem == "one init":
        kwargs["inits"] = (1,)
    elif problem == "three crops":
        extra = ["--crop", "none", "--crop", "none", "--crop", "none"]
    argv = _argv(f, out, "--overlay", str(tmp_path / "overlay.png"), *extra, **kwargs)
    if problem == "constant view 2":
        flat = tmp_path / "flat.npy"
        np.save(flat, np.zeros((PX + 8, PX), np.float32))  # only air: a line integral of 0 everywhere
        argv[argv.index(str(f / "xray2.npy"))] = str(flat)
    elif problem == "off the CT":
        start = torch.tensor(json.loads((f / "start2.json").read_text())["camera_from_world"], dtype=torch.float64)
        start[0, 3] += 2000.0  # the CT 2 m to the side of view 2's beam: its footprint misses the detector
        moved = _write_json(tmp_path / "away.json", pose_to_dict(start))
        argv[argv.index(str(f / "start2.json"))] = str(moved)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expect in err, err
    assert not out.exists() and not (tmp_path / "overlay.png").exists()


def test_an_xray_of_unknown_convention_is_resolved_against_a_drr_at_its_start(two_views, tmp_path, monkeypatch):
    """A stand-in for the detection records what it is given; the JSON reports what it found."""
    import DiffRegLogic.xray.readers as readers

    f = two_views["folder"]
    seen = []
    original = readers.read_xray

    def read_marked(path, **kwargs):
        xray = original(path, **kwargs)
        xray.meta["intensity_source"] = "default"
        return xray

    def resolve_convention(xray, drr):
        seen.append((tuple(xray.image.shape), tuple(drr.shape),
                     float(np.corrcoef(drr.numpy().ravel(), xray.image.numpy().ravel())[0, 1])))
        xray.meta["intensity_detected"] = "line_integral"
        return xray

    monkeypatch.setattr(readers, "read_xray", read_marked)
    import DiffRegLogic.xray.convention as convention

    monkeypatch.setattr(convention, "resolve_convention", resolve_convention)
    out = tmp_path / "result.json"
    assert main(_argv(f, out)) == 0
    assert [s[:2] for s in seen] == [((PX, PX), (PX, PX)), ((PX + 8, PX), (PX + 8, PX))]
    assert all(s[2] > 0.8 for s in seen), seen  # the DRR at the start resembles its X-ray
    result = json.loads(out.read_text())
    assert result["xray_meta"]["intensity_detected"] == "line_integral"
    assert [v["xray_meta"]["intensity_detected"] for v in result["views"]] == ["line_integral"] * 2
