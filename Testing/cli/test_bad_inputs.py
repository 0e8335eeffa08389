"""Bad input through the command line (issue 18): one clean ``error:`` line, status 2, nothing written or changed.

Every case runs ``diffreg`` in-process (`DiffRegLogic.cli.main`) on a tiny
case (a 16^3 NIfTI CT, a 32 x 32 detector) copied into ``tmp_path``, and
`check_refused` asserts the README's promise: exit status 2; stderr is
exactly one line starting with ``error: `` (captured at the file
descriptors, so ITK's and numpy's own warnings count); no traceback; every
file under ``tmp_path`` (the inputs) has the same bytes as before; no file
or folder appears; and the command returns within `CASE_TIME_S` (a SIGALRM
aborts a case that overruns, once Python regains control). The few cases in
`ISOLATED`, which spent minutes inside one compiled call before the fixes,
run as subprocesses with a timeout instead, so a regression fails rather
than stalls the suite.

The case tables (``*_CASES``: id -> ``builder(f) -> argv``) and the input
builders are shared with ``probe_bad_inputs.py``, which runs them (and many
more) as subprocesses. Registration cases pass `FAST` so that a case which
is (still) accepted costs a fraction of a second.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from test_cli import _sha, _write_json

CASE_TIME_S = 20.0
"""Bound on one refused case (seconds): a refusal is a check, not a computation."""
FAST = ["--levels", "1", "--iterations", "3", "--device", "cpu", "--quiet"]
"""Registration flags that keep a case that is (wrongly) accepted short."""
SIDE = 32
"""Detector rows and columns of the case."""


# --------------------------------------------------------------------------
# the inputs
# --------------------------------------------------------------------------


def _ct_hu() -> np.ndarray:
    """(16, 16, 16) float32 HU: a water ball with a bone bar in air."""
    k, j, i = np.mgrid[:16, :16, :16]
    ball = (i - 7.5) ** 2 + (j - 7.5) ** 2 + (k - 7.5) ** 2 < 36
    bar = (i > 4) & (i < 7) & (j > 3) & (j < 12)
    return (np.where(ball, 0.0, -1000.0) + 1000.0 * bar).astype(np.float32)


def write_ct(path: Path, hu: np.ndarray, spacing=(10.0, 10.0, 10.0)) -> Path:
    """A CT file (any SimpleITK format by suffix) of ``hu`` (K, J, I) with ``spacing`` mm."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(hu))
    image.SetSpacing(tuple(float(s) for s in spacing)[: image.GetDimension()])
    sitk.WriteImage(image, str(path))
    return path


def write_inputs(folder: Path) -> dict[str, Path]:
    """The valid case in ``folder``: CT, label map, geometry, start/true pose, X-ray as .npy, .nrrd and 16-bit .png."""
    import torch
    from PIL import Image

    from DiffRegLogic import Detector, render
    from DiffRegLogic.geometry import clinical_to_pose
    from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict
    from DiffRegLogic.volume.io import read_volume
    from DiffRegLogic.xray.files import write_image

    folder.mkdir(parents=True, exist_ok=True)
    files = {"ct": write_ct(folder / "ct.nii.gz", _ct_hu())}
    files["labels"] = write_ct(folder / "labels.nii.gz", (_ct_hu() > 500).astype(np.uint8))
    volume = read_volume(files["ct"])
    detector = Detector(SIDE, SIDE, 1000.0, (10.0, 10.0))
    start = clinical_to_pose(0.0, 0.0, 600.0, volume.center)
    truth = clinical_to_pose(3.0, -2.0, 600.0, volume.center)
    files["geometry"] = _write_json(folder / "geometry.json", detector_to_dict(detector))
    files["start"] = _write_json(folder / "start.json", pose_to_dict(start))
    files["truth"] = _write_json(folder / "truth.json", pose_to_dict(truth))
    drr = render(volume, detector, truth.to(torch.float32))[0].numpy()
    files["xray_npy"] = folder / "xray.npy"
    np.save(files["xray_npy"], drr)
    files["xray_nrrd"] = folder / "xray.nrrd"
    write_image(files["xray_nrrd"], drr, detector)
    files["xray_png"] = folder / "xray.png"
    Image.fromarray(np.round(drr / drr.max() * 60000).astype(np.uint16)).save(files["xray_png"])
    return files


class Inputs:
    """The case copied into one folder, and builders of the bad inputs a case needs (all made in that folder).

    Attributes are path strings: ``ct``, ``labels``, ``geometry``, ``start``,
    ``truth``, ``xray_npy``, ``xray_nrrd``, ``xray_png``; ``geometry_data``
    and ``start_data`` are the valid JSON contents.
    """

    def __init__(self, folder: Path, cache: dict[str, Path]):
        self.folder = Path(folder)
        for name, path in cache.items():
            shutil.copyfile(path, self.folder / path.name)
            setattr(self, name, str(self.folder / path.name))
        self.geometry_data = json.loads(Path(self.geometry).read_text())
        self.start_data = json.loads(Path(self.start).read_text())

    def new(self, name: str) -> str:
        """A path in the folder that does not exist (an output)."""
        return str(self.folder / name)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def json(self, name: str, data) -> str:
        return self.text(name, json.dumps(data))

    def geometry_with(self, **changes) -> str:
        return self.json("bad_geometry.json", {**self.geometry_data, **changes})

    def pose_with(self, row: int, col: int, value) -> str:
        matrix = [list(r) for r in self.start_data["camera_from_world"]]
        matrix[row][col] = value
        return self.json("bad_pose.json", {"camera_from_world": matrix})

    def folder_named(self, name: str) -> str:
        (self.folder / name).mkdir()
        return str(self.folder / name)

    def link(self, name: str, target: str, hard: bool = False) -> str:
        (os.link if hard else os.symlink)(target, self.folder / name)
        return str(self.folder / name)

    def ct_file(self, name: str, hu: np.ndarray | None = None, **kw) -> str:
        return str(write_ct(self.folder / name, _ct_hu() if hu is None else hu, **kw))

    def xray_file(self, name: str, pixels: np.ndarray | None = None) -> str:
        """An X-ray of the detector's size: the case's DRR, or ``pixels``, in the format of ``name``'s suffix."""
        pixels = np.load(self.xray_npy) if pixels is None else pixels
        if name.endswith(".npy"):
            np.save(self.folder / name, pixels)
            return str(self.folder / name)
        return str(write_ct(self.folder / name, pixels.astype(np.float32), spacing=(10.0, 10.0)))

    def truncated(self, name: str, source: str, fraction: float = 0.45) -> str:
        data = Path(source).read_bytes()
        return self.text(name, data[: int(len(data) * fraction)])

    def readonly(self, name: str) -> str:
        """A path in a folder that cannot be written: a 0o555 folder, or (as root, who writes anywhere) /proc/self."""
        if os.geteuid() == 0:
            return f"/proc/self/{name}"
        folder = self.folder / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder / name)


def _argv(command: list[str], defaults: dict[str, str | None], over: dict, extra: list[str]) -> list[str]:
    options = dict(defaults)
    options.update({f"--{k.replace('_', '-')}": v for k, v in over.items()})
    argv = list(command)
    for flag, value in options.items():
        if value is not None:
            argv += [flag, value]
    return argv + list(extra)


def register_argv(f: Inputs, *extra: str, fast: bool = True, **over) -> list[str]:
    """``register`` on the case (.npy X-ray, geometry, start pose) with ``over`` replacing flags (None drops one)."""
    defaults = {"--ct": f.ct, "--xray": f.xray_npy, "--geometry": f.geometry, "--init": f.start,
                "--out": f.new("result.json")}
    return _argv(["register"], defaults, over, [*(FAST if fast else []), *extra])  # the last of a flag wins


def render_argv(f: Inputs, *extra: str, **over) -> list[str]:
    defaults = {"--ct": f.ct, "--geometry": f.geometry, "--pose": f.start, "--out": f.new("drr.npy"),
                "--device": "cpu"}
    return _argv(["render"], defaults, over, list(extra))


def pose_argv(f: Inputs, *extra: str, **over) -> list[str]:
    defaults = {"--ct": f.ct, "--out": f.new("pose.json")}
    return _argv(["pose"], defaults, over, list(extra) or ["--clinical", "10", "-5", "--source-to-isocenter", "600"])


def demo_argv(f: Inputs, *extra: str, **over) -> list[str]:
    return _argv(["demo"], {"--out": f.new("demo")}, over, ["--device", "cpu", "--quiet", *extra])


def robustness_argv(f: Inputs, *extra: str, **over) -> list[str]:
    defaults = {"--out": f.new("robustness"), "--ct": f.ct, "--geometry": f.geometry, "--truth": f.truth}
    return _argv(["experiment", "robustness"], defaults, over,
                 ["--n", "1", "--levels", "1", "--iterations", "2", "--batch", "1", "--optimizers", "adam",
                  "--device", "cpu", *extra])


# --------------------------------------------------------------------------
# the promise
# --------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: relative path -> sha256 of a file, 'dir', or 'link -> target' (not followed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = _sha(path)
    return found


class CaseTimeout(BaseException):
    """A case ran past its bound (a BaseException, so that no handler in the tool turns it into an error line)."""


def run_bounded(argv: list[str], bound_s: float) -> tuple[int, float]:
    """``main(argv)`` -> (status, seconds), aborted by SIGALRM at ``bound_s`` (once Python regains control)."""
    from DiffRegLogic.cli import main

    def expire(signum, frame):
        raise CaseTimeout(f"still running after {bound_s:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, bound_s)
    start = time.perf_counter()
    try:
        code = main(argv)
    except CaseTimeout as exc:
        pytest.fail(f"hang: {exc}: {argv}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, time.perf_counter() - start


STARTUP_S = 40.0
"""Allowance for a subprocess's interpreter start and imports (seconds; ~4 s on an idle machine, more on a busy one)."""
MEMORY_GB = 8.0
"""Address-space limit of a subprocess case, so that a case asking for tens of GB fails instead of the machine."""
ISOLATED = {
    "render --blur-mm 1e9", "render --step-voxels 1e-6 (trilinear)", "register --n-starts 200000",
    "register --step-voxels 1e-7 (trilinear)", "render --geometry: rows = cols = 100000",
    "render: fused renderer, pixel spacing 6.7e16, principal point (2952, 10363), 6 x 7 x 8 CT",
}
"""Cases that ran for minutes inside one compiled call (where no signal interrupts them) or asked for tens of GB
before issue 18: run as a subprocess with a timeout, so that a regression fails the test instead of stalling it."""


def command_line(argv: list[str], memory_gb: float = MEMORY_GB) -> list[str]:
    """``python -m DiffRegLogic.cli ARGV``, under an address-space limit (``ulimit -v``) when ``memory_gb`` > 0."""
    import sys

    if memory_gb <= 0:
        return [sys.executable, "-m", "DiffRegLogic.cli", *argv]
    limit_kb = int(memory_gb * 2 ** 20)
    return ["/bin/sh", "-c", f'ulimit -v {limit_kb} && exec "$0" -m DiffRegLogic.cli "$@"', sys.executable, *argv]


def run_isolated(argv: list[str], folder: Path, timeout_s: float) -> tuple[int, str, str, float]:
    """``argv`` as a subprocess in ``folder`` -> (status, stdout, stderr, seconds); a test failure past ``timeout_s``."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    try:
        run = subprocess.run(command_line(argv), cwd=folder, env=env, capture_output=True, text=True,
                             errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: still running after {timeout_s:g} s (as a subprocess): {argv}")
    return run.returncode, run.stdout, run.stderr, time.perf_counter() - start


def check_refused(argv: list[str], folder: Path, capfd, expect: tuple[str, ...] = (),
                  bound_s: float = CASE_TIME_S, isolated: bool = False) -> str:
    """Run ``argv`` and assert the README's promise for bad input; returns the error line.

    ``expect``: words of which at least one must be in the message
    (case-insensitive), e.g. the flag or file field that is wrong.
    ``isolated``: run as a subprocess (see `ISOLATED`), allowing `STARTUP_S` more.
    """
    before = snapshot(folder)
    if isolated:
        bound_s += STARTUP_S
        code, out, err, seconds = run_isolated(argv, folder, bound_s)
    else:
        capfd.readouterr()
        code, seconds = run_bounded(argv, bound_s)
        captured = capfd.readouterr()
        out, err = captured.out, captured.err
    after = snapshot(folder)
    lines = err.splitlines()
    shown = f"\nargv: {argv}\nstatus: {code}\nstderr:\n{err[-3000:]}\nstdout:\n{out[-1000:]}"
    assert "Traceback" not in err + out, "a traceback" + shown
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not changed, f"input changed: {changed}" + shown
    removed = sorted(set(before) - set(after))
    assert not removed, f"input removed: {removed}" + shown
    created = sorted(set(after) - set(before))
    assert not created, f"written on failure: {created}" + shown
    assert code == 2, f"status {code}, not 2" + shown
    assert len(lines) == 1 and lines[0].startswith("error: "), "stderr is not one 'error: ' line" + shown
    if expect:
        assert any(word.lower() in lines[0].lower() for word in expect), f"the message names none of {expect}" + shown
    assert seconds < bound_s, f"took {seconds:.1f} s (bound {bound_s:g} s)" + shown
    return lines[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("bad_inputs_case"))


@pytest.fixture()
def f(tmp_path, cache) -> Inputs:
    inputs = Inputs(tmp_path, cache)
    yield inputs
    for path in tmp_path.rglob("*"):  # a 0o555 folder made by Inputs.readonly: let pytest remove it
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


Case = Callable[[Inputs], list]


def _run_table(table: dict[str, Case], case: str, f: Inputs, capfd, expect: tuple[str, ...] = ()) -> None:
    argv = table[case](f)  # builds the case's bad inputs first: they are inputs, counted before the run
    check_refused(argv, f.folder, capfd, expect, isolated=case in ISOLATED)


def _flag_of(case: str) -> tuple[str]:
    """The first ``--flag`` of a case's name: the output the message must name."""
    return (next(word for word in case.replace(":", " ").split() if word.startswith("--")),)


# --------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------

OVERWRITE_CASES: dict[str, Case] = {
    "register --out = --init": lambda f: register_argv(f, out=f.start),
    "register --out = --init (./ spelling)": lambda f: register_argv(f, out=str(Path(f.folder) / "." / "start.json")),
    "register --out = --geometry": lambda f: register_argv(f, out=f.geometry),
    "register --out = --truth": lambda f: register_argv(f, truth=f.truth, out=f.truth),
    "register --drr = --xray (.npy)": lambda f: register_argv(f, drr=f.xray_npy),
    "register --drr = --xray (.nrrd)": lambda f: register_argv(f, xray=f.xray_nrrd, drr=f.xray_nrrd),
    "register --drr = --ct": lambda f: register_argv(f, drr=f.ct),
    "register --overlay = --xray (.png)": lambda f: register_argv(f, xray=f.xray_png, overlay=f.xray_png),
    "register --curve = --xray (.png)": lambda f: register_argv(f, xray=f.xray_png, curve=f.xray_png),
    "register --out symlink to --init": lambda f: register_argv(f, out=f.link("link.json", f.start)),
    "register --out hard link to --init": lambda f: register_argv(f, out=f.link("hard.json", f.start, hard=True)),
    "register --drr symlink to --xray": lambda f: register_argv(f, drr=f.link("link.npy", f.xray_npy)),
    "render --out = --ct": lambda f: render_argv(f, out=f.ct),
    "render --out = --labels": lambda f: render_argv(f, labels=f.labels, out=f.labels),
    "render --out symlink to --ct": lambda f: render_argv(f, out=f.link("link.nii.gz", f.ct)),
    "render --out hard link to --ct": lambda f: render_argv(f, out=f.link("hard.nii.gz", f.ct, hard=True)),
    "pose --out = --ct": lambda f: pose_argv(f, out=f.ct),
    "pose --out symlink to --ct": lambda f: pose_argv(f, out=f.link("link.json", f.ct)),
    "pose --out hard link to --ct": lambda f: pose_argv(f, out=f.link("hard.json", f.ct, hard=True)),
}


@pytest.mark.parametrize("case", OVERWRITE_CASES)
def test_no_output_overwrites_an_input(case, f, capfd):
    _run_table(OVERWRITE_CASES, case, f, capfd, expect=_flag_of(case))


def _nan_affine_nifti(f: Inputs) -> str:
    """A .nii whose sform (the one ITK uses when the qform is unset) has a NaN."""
    path = Path(f.ct_file("nan_affine.nii"))
    header = bytearray(path.read_bytes())
    header[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1
    header[280:328] = np.array([[np.nan, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0]], "<f4").tobytes()
    path.write_bytes(bytes(header))
    return str(path)


def _mha(f: Inputs, name: str, header: dict[str, str], voxels: np.ndarray | None = None) -> str:
    voxels = _ct_hu() if voxels is None else voxels
    fields = {"ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
              "CompressedData": "False", "TransformMatrix": "1 0 0 0 1 0 0 0 1", "Offset": "0 0 0",
              "ElementSpacing": "10 10 10", "DimSize": "16 16 16", "ElementType": "MET_FLOAT", **header,
              "ElementDataFile": "LOCAL"}
    text = "".join(f"{k} = {v}\n" for k, v in fields.items())
    return f.text(name, text.encode() + voxels.astype("<f4").tobytes())


def _nrrd(f: Inputs, name: str, spacing: str) -> str:
    header = (f"NRRD0004\ntype: float\ndimension: 3\nsizes: 16 16 16\nspacings: {spacing}\n"
              "encoding: raw\nendian: little\n\n")
    return f.text(name, header.encode() + _ct_hu().astype("<f4").tobytes())


def _with(values: np.ndarray, index, value: float) -> np.ndarray:
    """A copy of ``values`` (float32, or float64 if it is) with ``value`` at ``index``."""
    values = values.astype(np.float64 if values.dtype == np.float64 else np.float32)
    values[index] = value
    return values


Maker = Callable[[Inputs], str]

BAD_CTS: dict[str, Maker] = {
    "NIfTI with a NaN voxel": lambda f: f.ct_file("nan.nii.gz", _with(_ct_hu(), (8, 8, 8), np.nan)),
    "NIfTI with an Inf voxel": lambda f: f.ct_file("inf.nii.gz", _with(_ct_hu(), (8, 8, 8), np.inf)),
    "NIfTI all NaN": lambda f: f.ct_file("allnan.nii.gz", np.full((16, 16, 16), np.nan, np.float32)),
    "truncated .nii": lambda f: f.truncated("cut.nii", f.ct_file("whole.nii")),
    "truncated .nii.gz": lambda f: f.truncated("cut.nii.gz", f.ct),
    "empty .nii.gz": lambda f: f.text("empty.nii.gz", b""),
    "gzip of garbage as .nii.gz": lambda f: f.text("garbage.nii.gz", gzip.compress(np.random.default_rng(0).bytes(4000))),
    "NRRD with nan spacings": lambda f: _nrrd(f, "nan_spacing.nrrd", "nan nan nan"),
    "NIfTI with a NaN affine": lambda f: _nan_affine_nifti(f),
    "MHA with a singular direction": lambda f: _mha(f, "singular.mha", {"TransformMatrix": "1 0 0 1 0 0 0 0 1"}),
}
"""CT files that must be refused by every command that reads a CT (and as a label map)."""

BAD_XRAYS: dict[str, Maker] = {
    "NIfTI with a NaN pixel": lambda f: f.xray_file("nan.nii.gz", _with(np.load(f.xray_npy), (3, 3), np.nan)),
    "NIfTI with an Inf pixel": lambda f: f.xray_file("inf.nii.gz", _with(np.load(f.xray_npy), (3, 3), np.inf)),
    ".npy with a 1e300 pixel (float64)": lambda f: f.xray_file(
        "huge.npy", _with(np.load(f.xray_npy).astype(np.float64), (3, 3), 1e300)),
    "truncated .nii.gz": lambda f: f.truncated("cut.nii.gz", f.xray_file("x.nii.gz")),
    "truncated PNG": lambda f: f.truncated("cut.png", f.xray_png, 0.6),
}
"""X-ray files that must be refused by every command that reads an X-ray."""

BAD_FILE_CASES: dict[str, Case] = {
    **{f"render --ct: {k}": (lambda f, k=k: render_argv(f, ct=BAD_CTS[k](f))) for k in BAD_CTS},
    **{f"register --xray: {k}": (lambda f, k=k: register_argv(f, xray=BAD_XRAYS[k](f))) for k in BAD_XRAYS},
    "register --ct: NIfTI with NaN slices": lambda f: register_argv(
        f, ct=f.ct_file("nan.nii.gz", _with(_ct_hu(), (slice(4, 8),), np.nan))),
}


@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_bad_files_are_refused(case, f, capfd):
    _run_table(BAD_FILE_CASES, case, f, capfd)


BIG_INT = 10 ** 400
"""An integer JSON (and Python) take, which no float holds."""

BAD_GEOMETRIES: dict[str, Maker] = {
    "SDD 1e308": lambda f: f.geometry_with(source_to_detector_mm=1e308),
    "pixel spacing 1e308": lambda f: f.geometry_with(pixel_spacing_mm=[1e308, 1e308]),
    "pixel spacing 1e-300": lambda f: f.geometry_with(pixel_spacing_mm=[1e-300, 1.0]),
    "principal point 1e300": lambda f: f.geometry_with(principal_point_px=[1e300, 0.0]),
    "SDD an integer beyond float range": lambda f: f.geometry_with(source_to_detector_mm=BIG_INT),
    "rows an integer beyond float range": lambda f: f.geometry_with(rows=BIG_INT),
    "rows = cols = 100000": lambda f: f.geometry_with(rows=100000, cols=100000),
}
"""Geometry files with sizes no renderer can finish (or no float holds)."""

BAD_POSES: dict[str, Maker] = {
    "translated by 1e300": lambda f: f.pose_with(0, 3, 1e300),
    "an entry an integer beyond float range": lambda f: f.pose_with(2, 3, BIG_INT),
}
"""Pose files with numbers beyond any scene."""

EXTREME_CASES: dict[str, Case] = {
    **{f"render --geometry: {k}": (lambda f, k=k: render_argv(f, geometry=BAD_GEOMETRIES[k](f))) for k in BAD_GEOMETRIES},
    **{f"render --pose: {k}": (lambda f, k=k: render_argv(f, pose=BAD_POSES[k](f))) for k in BAD_POSES},
    "register --geometry: SDD 1e308": lambda f: register_argv(f, geometry=BAD_GEOMETRIES["SDD 1e308"](f)),
    "render: fused renderer, pixel spacing 6.7e16, principal point (2952, 10363), 6 x 7 x 8 CT": lambda f: render_argv(
        f, ct=f.ct_file("small.nii.gz", _ct_hu()[:8, :7, :6]), geometry=f.json("fuzzed.json", {
            "source_to_detector_mm": 1000.0, "rows": 7, "cols": 9, "pixel_spacing_mm": [6.7e16, 6.7e16],
            "principal_point_px": [2952.0, 10363.0]})),
    **{f"register --init: {k}": (lambda f, k=k: register_argv(f, init=BAD_POSES[k](f))) for k in BAD_POSES},
    "register: an all-air CT": lambda f: register_argv(f, ct=f.ct_file("air.nii.gz", np.full((16, 16, 16), -1000.0, np.float32))),
    "register: --levels 1e6": lambda f: register_argv(f, "--levels", "1e6"),
    "pose: --clinical nan 0": lambda f: pose_argv(f, "--clinical", "nan", "0", "--source-to-isocenter", "600"),
    "pose: --clinical inf 0": lambda f: pose_argv(f, "--clinical", "inf", "0", "--source-to-isocenter", "600"),
    "pose: --source-to-isocenter 0": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter", "0"),
    "pose: --source-to-isocenter -600": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter=-600"),
    "pose: --source-to-isocenter nan": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter", "nan"),
    "pose: --source-to-isocenter inf": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter", "inf"),
    "pose: --spherical with a nan angle": lambda f: pose_argv(f, "--spherical", "nan", "0", "0", "0", "0", "0",
                                                              "--sdd", "1000"),
    "pose: --spherical --sdd 0": lambda f: pose_argv(f, "--spherical", "0", "0", "0", "0", "0", "0", "--sdd", "0"),
    "pose: --spherical --sdd inf": lambda f: pose_argv(f, "--spherical", "0", "0", "0", "0", "0", "0", "--sdd", "inf"),
    "pose: --isocenter nan 0 0": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter", "600",
                                                     "--isocenter", "nan", "0", "0"),
    "pose: --isocenter 1e300 0 0": lambda f: pose_argv(f, "--clinical", "10", "0", "--source-to-isocenter", "600",
                                                       "--isocenter", "1e300", "0", "0"),
}


@pytest.mark.parametrize("case", EXTREME_CASES)
def test_extreme_geometry_and_poses_are_refused(case, f, capfd):
    _run_table(EXTREME_CASES, case, f, capfd)


OUTPUTS = {  # (argv builder, output flag, is the output a folder, its name)
    "register --out": (register_argv, "out", False, "result.json"),
    "register --drr": (register_argv, "drr", False, "drr.npy"),
    "render --out": (render_argv, "out", False, "drr.npy"),
    "pose --out": (pose_argv, "out", False, "pose.json"),
    "demo --out": (demo_argv, "out", True, "demo"),
    "experiment robustness --out": (robustness_argv, "out", True, "robustness"),
}
"""Every output path flag of every command (the probe adds --overlay, --curve and the other experiments)."""


def output_path_case(output: str, problem: str, outputs: dict = OUTPUTS) -> Case:
    """The output of ``output`` (a key of ``outputs``) made unwritable by ``problem`` (see `output_problems`)."""
    build, flag, _, name = outputs[output]

    def case(f: Inputs) -> list:
        path = {
            "an existing folder": lambda: f.folder_named(name),
            "an existing file": lambda: f.text(name, "a file, not a folder"),
            "parent is a file": lambda: str(Path(f.ct) / name),
            "grandparent is a file": lambda: str(Path(f.ct) / "sub" / name),
            "in a read-only folder": lambda: f.readonly(name),
        }[problem]()
        return build(f, **{flag: path})

    return case


def output_problems(is_folder: bool) -> tuple[str, ...]:
    """Why an output path cannot be written: it is a folder (a file, for outputs that are folders), or its place is."""
    return ("an existing file" if is_folder else "an existing folder", "parent is a file", "grandparent is a file",
            "in a read-only folder")


OUTPUT_CASES: dict[str, Case] = {f"{output}: {problem}": output_path_case(output, problem)
                                 for output, (_, _, is_folder, _) in OUTPUTS.items()
                                 for problem in output_problems(is_folder)}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_unwritable_outputs_are_refused_before_the_work(case, f, capfd):
    _run_table(OUTPUT_CASES, case, f, capfd, expect=_flag_of(case))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_CONTENTS: dict[str, Callable[[Inputs, dict], str]] = {
    "binary bytes": lambda f, data: f.text("bad.json", bytes(range(256)) * 4),
    "Latin-1": lambda f, data: f.text("bad.json", json.dumps({**data, "note": "r\u00e9sum\u00e9"},
                                                             ensure_ascii=False).encode("latin-1")),
    "UTF-16": lambda f, data: f.text("bad.json", json.dumps(data).encode("utf-16")),
    "100000 nested brackets": lambda f, data: f.text("bad.json", _nested(100_000)),
    "40 nested objects": lambda f, data: f.text("bad.json", '{"a":' * 40 + "1" + "}" * 40),
    "a directory": lambda f, data: f.folder_named("bad.json"),
    "2 MB of spaces": lambda f, data: f.text("bad.json", " " * 2_000_000 + json.dumps(data)),
    "NaN literal": lambda f, data: f.text("bad.json", json.dumps({k: float("nan") for k in data})),
    "a JSON list": lambda f, data: f.text("bad.json", "[1, 2, 3]"),
}
JSON_FLAGS: dict[str, Callable[[Inputs, str], list]] = {
    "render --geometry": lambda f, path: render_argv(f, geometry=path),
    "render --pose": lambda f, path: render_argv(f, pose=path),
    "register --geometry": lambda f, path: register_argv(f, geometry=path),
    "register --init": lambda f, path: register_argv(f, init=path),
    "register --truth": lambda f, path: register_argv(f, truth=path),
}


def json_case(flag: str, content: str) -> Case:
    def case(f: Inputs) -> list:
        data = f.geometry_data if flag.endswith("--geometry") else f.start_data
        return JSON_FLAGS[flag](f, JSON_CONTENTS[content](f, data))

    return case


JSON_CASES: dict[str, Case] = {f"{flag}: {content}": json_case(flag, content)
                               for flag in JSON_FLAGS for content in JSON_CONTENTS}


@pytest.mark.parametrize("case", JSON_CASES)
def test_json_files_that_are_not_utf8_json_objects_are_refused(case, f, capfd):
    _run_table(JSON_CASES, case, f, capfd, expect=("geometry",) if "--geometry" in case else ("pose",))


NUMBER_CASES: dict[str, Case] = {
    "render --max-memory-mb inf": lambda f: render_argv(f, max_memory_mb="inf"),
    "render --max-memory-mb nan": lambda f: render_argv(f, max_memory_mb="nan"),
    "render --max-memory-mb 0": lambda f: render_argv(f, max_memory_mb="0"),
    "render --noise-photons 1e-300": lambda f: render_argv(f, noise_photons="1e-300"),
    "render --noise-photons inf": lambda f: render_argv(f, noise_photons="inf"),
    "render --blur-mm 1e9": lambda f: render_argv(f, blur_mm="1e9"),
    "render --blur-mm nan": lambda f: render_argv(f, blur_mm="nan"),
    "render --noise-seed 2**70": lambda f: render_argv(f, noise_photons="1000", noise_seed=str(2 ** 70)),
    "render --step-voxels 1e-6 (trilinear)": lambda f: render_argv(f, renderer="trilinear", step_voxels="1e-6"),
    "register --seed 2**70": lambda f: register_argv(f, seed=str(2 ** 70)),
    "register --seed -1": lambda f: register_argv(f, seed="-1"),
    "register --n-starts 200000": lambda f: register_argv(f, n_starts="200000"),
    "register --step-voxels 1e-7 (trilinear)": lambda f: register_argv(f, renderer="trilinear", step_voxels="1e-7"),
    "register --iterations 2**70": lambda f: register_argv(f, "--iterations", str(2 ** 70)),
    "register --levels nan": lambda f: register_argv(f, "--levels", "nan"),
    "register --levels inf": lambda f: register_argv(f, "--levels", "inf"),
}


@pytest.mark.parametrize("case", NUMBER_CASES)
def test_numbers_out_of_range_are_refused(case, f, capfd):
    _run_table(NUMBER_CASES, case, f, capfd)


@pytest.mark.parametrize("crop", ["", "a,b,c,d", "1.5,0,0,0", "1e2,0,0,0", " , , , ", "1,2,3", "0x1,0,0,0"])
def test_bad_crop_is_refused(crop, f, capfd):
    check_refused(register_argv(f, crop=crop), f.folder, capfd, expect=("--crop",))


ARGPARSE_CASES: dict[str, Case] = {
    "unknown command": lambda f: ["nope"],
    "render --renderer nope": lambda f: render_argv(f, renderer="nope"),
    "render --dtype float16": lambda f: render_argv(f, dtype="float16"),
    "register --similarity nope": lambda f: register_argv(f, similarity="nope"),
    "experiment nope": lambda f: ["experiment", "nope", "--out", f.new("x")],
    "pose --clinical with one angle": lambda f: ["pose", "--clinical", "10", "--out", f.new("p.json")],
    "render --iterations (not an option of render)": lambda f: render_argv(f, iterations="3"),
    "register --seed abc": lambda f: register_argv(f, seed="abc"),
}


@pytest.mark.parametrize("case", ARGPARSE_CASES)
def test_argument_errors_are_one_line(case, f, capfd):
    _run_table(ARGPARSE_CASES, case, f, capfd)


WRITTEN_ON_FAILURE_CASES: dict[str, Case] = {
    "register --drr/--overlay/--curve with --out an existing folder": lambda f: register_argv(
        f, out=f.folder_named("result.json"), drr=f.new("drr.npy"), overlay=f.new("overlay.png"),
        curve=f.new("curve.png")),
    "register --drr/--overlay/--curve with --out under a file": lambda f: register_argv(
        f, out=str(Path(f.ct) / "result.json"), drr=f.new("drr.npy"), overlay=f.new("overlay.png"),
        curve=f.new("curve.png")),
    "register --drr with --overlay under a file": lambda f: register_argv(
        f, drr=f.new("drr.npy"), overlay=str(Path(f.ct) / "overlay.png")),
    "demo --out new --levels 0": lambda f: demo_argv(f, "--levels", "0"),
    "demo --out new --iterations 0": lambda f: demo_argv(f, "--iterations", "0"),
    "demo --out new --max-memory-mb 0": lambda f: demo_argv(f, "--max-memory-mb", "0"),
    "demo --out new --n-starts 0": lambda f: demo_argv(f, "--n-starts", "0"),
    "experiment robustness --out new --max-trans 1e6": lambda f: robustness_argv(f, "--max-trans", "1e6"),
    "experiment robustness --out new --n 0": lambda f: robustness_argv(f, "--n", "0"),
    "render --out new/drr.npy with a bad pose": lambda f: render_argv(
        f, out=str(Path(f.folder) / "new" / "drr.npy"), pose=f.pose_with(0, 0, 2.0)),
}


@pytest.mark.parametrize("case", WRITTEN_ON_FAILURE_CASES)
def test_nothing_is_written_when_a_command_fails(case, f, capfd):
    _run_table(WRITTEN_ON_FAILURE_CASES, case, f, capfd)


ALL_CASES: dict[str, dict[str, Case]] = {
    "inputs overwritten": OVERWRITE_CASES, "bad files": BAD_FILE_CASES, "extreme geometry": EXTREME_CASES,
    "output paths": OUTPUT_CASES, "JSON": JSON_CASES, "numbers": NUMBER_CASES, "arguments": ARGPARSE_CASES,
    "written on failure": WRITTEN_ON_FAILURE_CASES,
}
"""The tables above by issue class (the probe runs them all, and more)."""


def test_the_valid_case_itself_runs(f, capfd):
    """The case is valid: render, pose and a short register succeed on it (so every refusal above is the bad input's)."""
    from DiffRegLogic.cli import main

    assert main(render_argv(f)) == 0
    assert main(pose_argv(f)) == 0
    assert main(register_argv(f, xray=f.xray_png)) == 0
    assert not math.isnan(json.loads(Path(f.new("result.json")).read_text())["similarity"])
